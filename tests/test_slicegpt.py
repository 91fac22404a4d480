"""SliceGPT: the rotation algebra, norm fusion and full-width rotation keep the function, the achieved ratio, and
the sliced model reloads with the same logits (numprune.load_pruned and remote code)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import numprune
from numprune import NumpruneError, prune_
from numprune.adapters import get_adapter
from numprune.methods.slicegpt import (
    fuse_norms_,
    residual_dims,
    rotate_and_slice_,
    shortcut_params,
    sliced_params,
    slicing_dim,
)
from numprune.rotate import fold_norm, kept_fraction, principal_basis, read_rotated, shortcut, write_rotated
from tests.conftest import tiny_model

CPU = torch.device("cpu")


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_principal_basis_orders_directions_by_variance():
    # points spread 3x more along (1, 1) than along (1, -1): the first direction is the diagonal
    x = torch.tensor([[3.0, 3.0], [-3.0, -3.0], [1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    values, q = principal_basis(x.T @ x / 4)
    torch.testing.assert_close(values, torch.tensor([9.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(q[:, 0].abs(), torch.full((2,), 2**-0.5, dtype=torch.float64))
    torch.testing.assert_close(q.T @ q, torch.eye(2, dtype=torch.float64))
    assert kept_fraction(values, 1) == pytest.approx(0.9)


def test_readers_writers_and_shortcuts_commute_with_a_rotation():
    gen = torch.Generator().manual_seed(0)
    x, h = torch.randn(5, 6, generator=gen, dtype=torch.float64), torch.randn(5, 3, generator=gen, dtype=torch.float64)
    w_read, w_write = torch.randn(3, 6, generator=gen, dtype=torch.float64), torch.randn(6, 3, generator=gen).double()
    q_in, q_out = _orthogonal(6, 1), _orthogonal(6, 2)
    torch.testing.assert_close((x @ q_in) @ read_rotated(w_read, q_in).T, x @ w_read.T)  # reads the same
    torch.testing.assert_close(h @ write_rotated(w_write, q_out).T, (h @ w_write.T) @ q_out)  # writes rotated
    torch.testing.assert_close((x @ q_in) @ shortcut(q_in, q_out).T, x @ q_out)  # residual into the next basis
    g = torch.rand(6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(x @ fold_norm(w_read, g).T, (x * g) @ w_read.T)


def test_norm_fusion_keeps_logits_and_unties_the_head(inputs):
    model = tiny_model("llama", 2, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    expect = model(inputs).logits
    fuse_norms_(model, get_adapter(model))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not any("layernorm" in n or n.endswith("norm.weight") for n, _ in model.named_parameters())
    torch.testing.assert_close(model(inputs).logits, expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_rotation_at_full_width_keeps_logits(model, calib, inputs, tied):
    """The key oracle: PCA rotations of every residual point with nothing sliced compute the same function."""
    model = tiny_model("llama", model.config.num_key_value_heads, tie_word_embeddings=tied)
    expect = model(inputs).logits
    folded = model.model.layers[1].self_attn.q_proj.weight * model.model.layers[1].input_layernorm.weight
    kept = rotate_and_slice_(model, get_adapter(model), calib, [64] * 7, CPU)
    assert kept == pytest.approx([1.0] * 7)
    assert not torch.allclose(model.model.layers[1].self_attn.q_proj.weight, folded, atol=1e-3)  # really rotated
    torch.testing.assert_close(model(inputs).logits, expect, atol=1e-4, rtol=1e-4)


def test_slicing_changes_the_function_and_keeps_the_top_variance(calib, inputs):
    model = tiny_model("llama", 2)
    expect = model(inputs).logits
    kept = rotate_and_slice_(model, get_adapter(model), calib, residual_dims(64, 3, 40), CPU)
    assert all(0.5 < k < 1 for k in kept[:-1]) and kept[-1] == pytest.approx(1.0)
    got = model(inputs).logits
    assert torch.isfinite(got).all() and not torch.allclose(got, expect, atol=1e-2)
    assert model.model.embed_tokens.weight.shape == (128, 40) and model.lm_head.weight.shape == (128, 64)
    layer = model.model.layers[2]
    assert layer.attn_shortcut.weight.shape == (40, 40) and layer.mlp_shortcut.weight.shape == (64, 40)


def _counted(model) -> int:
    """Attention, MLP and shortcut weights of the decoder layers, counted on the module."""
    return sum(p.numel() for n, p in model.model.layers.named_parameters())


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_achieved_ratio_counts_the_shortcuts_and_is_within_one_step(model, calib, ratio):
    adapter = get_adapter(model)
    geos = [adapter.geometry(layer) for layer in adapter.layers(model)]
    dense = _counted(model) - sum(p.numel() for n, p in model.model.layers.named_parameters() if "norm" in n)
    plan = prune_(model, calibration=calib, ratio=ratio, method="slicegpt", progress=False)
    a, dim = plan.achieved, plan.transform["dim"]
    assert a["attn_mlp_params_total"] == dense
    assert _counted(model) == dense - a["attn_mlp_params_removed"]  # what is on the modules, shortcuts included
    assert a["shortcut_params"] == shortcut_params(residual_dims(64, 3, dim)) > 0
    step = sliced_params(geos, residual_dims(64, 3, dim + 1)) - sliced_params(geos, residual_dims(64, 3, dim))
    assert abs(a["params_ratio"] - ratio) <= step / dense / 2 + 1e-12
    assert plan.transform["residual_dims"] == [dim] * 6 + [64] and model.config.residual_dims == [dim] * 6 + [64]
    assert "residual stream 64 -> " in plan.summary()


def test_slicing_dim_is_the_closest_multiple_of_the_step():
    model = tiny_model("llama", 4)
    geos = [get_adapter(model).geometry(layer) for layer in get_adapter(model).layers(model)]
    total = sum(g.params for g in geos)

    def gap(d):
        return abs(1 - sliced_params(geos, residual_dims(64, 3, d)) / total - 0.3)

    assert slicing_dim(geos, 0.3, 1) == min(range(64, 0, -1), key=gap)
    assert slicing_dim(geos, 0.3, 8) == min(range(64, 0, -8), key=gap) and slicing_dim(geos, 0.3, 8) % 8 == 0
    # at the dense width nothing is removed and the 2L shortcut matrices cost 2 L D^2 on top
    assert sliced_params(geos, [64] * 7) == total + 6 * 64 * 64


@pytest.mark.parametrize(
    "kind,kv,tied",
    [("llama", 4, True), ("llama", 2, False), ("mistral", 2, False), ("qwen2", 2, True), ("qwen3", 2, False)],
)
def test_save_reload_identical_logits(kind, kv, tied, calib, inputs, tmp_path):
    model = tiny_model(kind, kv, tie_word_embeddings=tied)
    plan = prune_(model, calibration=calib, ratio=0.3, method="slicegpt", progress=False)
    expect = model(inputs).logits
    out = numprune.save_pruned(model, tmp_path / "m", plan)
    assert (out / "modeling_numprune_sliced.py").exists() and not (out / "modeling_numprune.py").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == f"numpruned_sliced_{kind}" and cfg["tie_word_embeddings"] is False
    for loaded in (numprune.load_pruned(out), AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)):
        torch.testing.assert_close(loaded.eval()(inputs).logits, expect, atol=0, rtol=0)
    saved = numprune.PruningPlan.load(out / "pruning_plan.json")
    assert saved.transform == plan.transform and saved.achieved == plan.achieved
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(numprune.load_pruned(out).generate(inputs, **gen), model.generate(inputs, **gen))


def test_refused_inputs(calib):
    with pytest.raises(NumpruneError, match="call prune_"):
        numprune.apply_plan_(tiny_model(), prune_(tiny_model(), calibration=calib, ratio=0.2, method="slicegpt"))
    pruned = tiny_model()
    prune_(pruned, calibration=calib, ratio=0.4, progress=False)
    assert pruned.config.layer_num_heads is not None  # heads and channels pruned per layer
    with pytest.raises(NumpruneError, match="dense"):
        prune_(copy.deepcopy(pruned), calibration=calib, ratio=0.2, method="slicegpt", progress=False)
