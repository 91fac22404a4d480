"""Global ranking (Eq. 8): parameter accounting, guards, uniform allocation, rounding."""

from __future__ import annotations

import pytest
import torch

from numprune.select import LayerUnits, select_units


def layers(n_layers=4, heads=4, channels=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        LayerUnits(torch.rand(heads, generator=g), 40, torch.rand(channels, generator=g), 3) for _ in range(n_layers)
    ]


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7])
def test_params_ratio_within_one_unit(ratio):
    ls = layers()
    sel = select_units(ls, ratio, head_scaling="none")
    assert 0 <= sel.params_removed - ratio * sel.params_total < 40


def test_units_ratio_counts_units():
    ls = layers()
    sel = select_units(ls, 0.25, ratio_of="units", head_scaling="none")
    assert sel.units_removed == int(0.25 * sel.units_total)


def test_lowest_scores_go_first():
    ls = [LayerUnits(torch.tensor([5.0, 6.0]), 1, torch.tensor([0.1, 3.0, 0.2, 4.0]), 1)]
    sel = select_units(ls, 0.34, ratio_of="units", head_scaling="none", min_attn=0, min_mlp=0)
    assert sel.kept_mlp[0].tolist() == [1, 3] and sel.kept_attn[0].tolist() == [0, 1]


def test_alpha_scaling_protects_heads():
    ls = [LayerUnits(torch.tensor([0.5, 0.6]), 4, torch.tensor([0.7, 0.8, 0.9, 1.0]), 1)]
    plain = select_units(ls, 0.3, ratio_of="units", head_scaling="none", min_attn=0)
    scaled = select_units(ls, 0.3, ratio_of="units", head_scaling="alpha", min_attn=0)
    assert plain.kept_attn[0].numel() < 2 and scaled.kept_attn[0].numel() == 2


def test_minimum_per_layer_guard():
    # Layer 0 has by far the lowest scores: without the guard it would be emptied.
    ls = layers()
    ls[0] = LayerUnits(ls[0].attn_scores - 10, 40, ls[0].mlp_scores - 10, 3)
    sel = select_units(ls, 0.6, head_scaling="none", min_attn=1, min_mlp=2)
    assert sel.kept_attn[0].numel() == 1 and sel.kept_mlp[0].numel() == 2


def test_uniform_allocation_prunes_each_layer_alike():
    sel = select_units(layers(), 0.25, allocation="uniform")
    assert [k.numel() for k in sel.kept_mlp] == [24] * 4 and [k.numel() for k in sel.kept_attn] == [3] * 4


def test_round_to_multiple():
    sel = select_units(layers(channels=64), 0.3, round_to=8, head_scaling="none")
    assert all(k.numel() % 8 == 0 and k.numel() > 0 for k in sel.kept_mlp)


def test_bad_ratio():
    with pytest.raises(ValueError):
        select_units(layers(), 1.0)
