"""The error exchange rate (numprune.exchange): OBS removal curves against independent least squares, greedy
against brute force where it is exact, hull slopes, and the global merge against brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from numprune import prune_
from numprune.adapters.base import LayerGeometry
from numprune.compensate import compensate, output_error
from numprune.curves import layer_error_curves, ordered_refit_errors
from numprune.errors import NumpruneError
from numprune.exchange import (
    damped_gram,
    hull_slopes,
    layer_error_scores,
    removal_curve,
    unit_scores,
)
from numprune.methods import effective_options
from numprune.select import LayerUnits, attention_units, best_split, select_units
from tests.conftest import tiny_model


def _problem(d=8, out=5, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    return x.T @ x / n, torch.randn(out, d, generator=g, dtype=torch.float64)


def refit_error(gram, weight, removed, damp, undamped=False):
    """Oracle: the damped refit objective ``min tr((W - W')^T Gd (W - W'))`` with the columns ``removed`` of
    W' zero, by lstsq on a square-root factor of Gd (no OBS formula involved); ``undamped``: the output error
    ``tr(D^T G D)`` of that refit, ``D = W - W'``."""
    gd = damped_gram(gram, damp)
    lt = torch.linalg.cholesky(gd).T  # Gd = L L^T: the objective is ||L^T (W - W')||^2 over W = weight.T
    w = weight.T.to(torch.float64)
    keep = [i for i in range(gram.shape[0]) if i not in set(removed)]
    new = torch.zeros_like(w)
    if keep:
        new[keep] = torch.linalg.lstsq(lt[:, keep], lt @ w).solution
    diff = w - new
    return float(torch.einsum("io,ij,jo->", diff, gram.to(torch.float64) if undamped else gd, diff))


@pytest.mark.parametrize("damp", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["single", "blocks", "per_step", "pools", "order"])
def test_curve_is_the_refit_error_of_the_removed_sets(kind, damp):
    gram, weight = _problem()
    cols = torch.arange(8)[:, None] if kind in ("single", "per_step") else torch.arange(8).reshape(4, 2)
    opts = {"per_step": 3} if kind == "per_step" else {}
    if kind == "pools":
        cols, opts = torch.arange(8)[:, None], {"pools": [[0, 1, 2, 3], [4, 5, 6, 7]]}
    if kind == "order":
        opts = {"order": [[2], [0, 3]]}
    chosen, err = removal_curve(gram, weight, cols, damp=damp, **opts)
    removed: list[int] = []
    assert err[0] == 0
    for k, step in enumerate(chosen, start=1):
        removed += cols[step].reshape(-1).tolist()
        want = refit_error(gram, weight, removed, damp)
        assert err[k].item() == pytest.approx(want, rel=1e-8, abs=1e-9)
    if kind == "pools":  # a step removes one unit of every pool, and every pool keeps one
        assert all(sorted(u // 4 for u in step) == [0, 1] for step in chosen) and len(chosen) == 3
    if kind == "order":
        assert chosen == [[2], [0, 3]]


@pytest.mark.parametrize("undamped", [False, True])
@pytest.mark.parametrize("damp", [0.0, 0.1])
def test_ordered_errors_are_the_refit_errors_of_every_prefix(damp, undamped):
    """Oracle: lstsq refits of every prefix of a fixed order (the damped objective, or the output error of
    the damped refit), from one Cholesky factor; the order covers part of the columns."""
    gram, weight = _problem()
    cols = torch.tensor([5, 0, 7, 2, 3, 6])
    err = ordered_refit_errors(gram, weight, cols, damp=damp, undamped=undamped)
    assert err.shape == (7,) and err[0] == 0
    for m in range(1, 7):
        want = refit_error(gram, weight, cols[:m].tolist(), damp, undamped)
        assert err[m].item() == pytest.approx(want, rel=1e-8, abs=1e-9)


def test_undamped_curve_is_the_compensation_error():
    gram, weight = _problem(seed=3)
    chosen, err = removal_curve(gram, weight, torch.arange(8)[:, None], damp=0.0, steps=5)
    removed = [u for step in chosen for u in step]
    keep = torch.tensor([i for i in range(8) if i not in removed])
    new = compensate(gram, weight, keep, damp=0.0)
    assert err[-1].item() == pytest.approx(output_error(gram, weight, new, keep), rel=1e-8)


@pytest.mark.parametrize("block", [1, 2])
def test_first_greedy_step_is_the_best_single_unit(block):
    gram, weight = _problem(seed=1)
    cols = torch.arange(8).reshape(-1, block)
    chosen, err = removal_curve(gram, weight, cols, damp=0.1, steps=1)
    brute = [refit_error(gram, weight, cols[u].tolist(), 0.1) for u in range(cols.shape[0])]
    assert chosen[0] == [min(range(len(brute)), key=brute.__getitem__)]
    assert err[1].item() == pytest.approx(min(brute), rel=1e-8)


def test_greedy_never_beats_brute_force_and_matches_it_on_independent_units():
    gram, weight = _problem(seed=2)
    cols = torch.arange(8).reshape(4, 2)
    chosen, err = removal_curve(gram, weight, cols, damp=0.1)
    for k in range(1, 5):  # correlated units: greedy is an upper bound of the best k-subset
        best = min(refit_error(gram, weight, cols[list(s)].reshape(-1).tolist(), 0.1)
                   for s in itertools.combinations(range(4), k))  # fmt: skip
        assert err[k].item() >= best - 1e-9
    # units whose inputs are uncorrelated (block-diagonal Gram): greedy is exact, set by set
    blocks = torch.block_diag(*[gram[2 * u : 2 * u + 2, 2 * u : 2 * u + 2] for u in range(4)])
    chosen, err = removal_curve(blocks, weight, cols, damp=0.1)
    for k in range(1, 5):
        subsets = list(itertools.combinations(range(4), k))
        errs = [refit_error(blocks, weight, cols[list(s)].reshape(-1).tolist(), 0.1) for s in subsets]
        best = min(range(len(subsets)), key=errs.__getitem__)
        assert sorted(u for step in chosen[:k] for u in step) == list(subsets[best])
        assert err[k].item() == pytest.approx(errs[best], rel=1e-8)


def test_hull_slopes():
    # marginals 2, 1, 3 (not convex): the hull joins the first two steps at slope 1.5
    slopes = hull_slopes(torch.ones(3), torch.tensor([0.0, 2.0, 3.0, 6.0], dtype=torch.float64))
    assert slopes.tolist() == [1.5, 1.5, 3.0]
    # unequal costs: slope is error per parameter
    slopes = hull_slopes(torch.tensor([2.0, 4.0]), torch.tensor([0.0, 2.0, 10.0], dtype=torch.float64))
    assert slopes.tolist() == [1.0, 2.0]


def test_unit_scores_keep_the_removal_order_through_ties():
    scores = unit_scores([[3, 1], [0]], torch.tensor([1.0, 1.0], dtype=torch.float64), 5)
    assert scores[3] == 1.0 and scores[3] < scores[1] < scores[0] and scores[0] - 1.0 < 1e-12
    assert scores[[2, 4]].isinf().all()
    assert scores.argsort(stable=True)[:3].tolist() == [3, 1, 0]


def _independent_layer(seed, geo):
    """Gram matrices that are block-diagonal along the layer's units (heads, channels): errors add up."""
    g = torch.Generator().manual_seed(seed)
    d_o = geo.num_heads * geo.head_dim

    def block_gram(d, b):
        x = torch.randn(32, b, generator=g, dtype=torch.float64) * torch.rand(1, generator=g, dtype=torch.float64)
        return torch.block_diag(*[(x.T @ x / 32) * (u + 1) for u in range(d // b)])

    o_w = torch.randn(geo.hidden, d_o, generator=g, dtype=torch.float64)
    d_w = torch.randn(geo.hidden, geo.intermediate, generator=g, dtype=torch.float64) * 2
    return block_gram(d_o, geo.head_dim), o_w, block_gram(geo.intermediate, 1), d_w


def test_global_merge_is_optimal_for_independent_units():
    """Eq. 8 over error slopes: the selection has the least total refit error of all subsets of units that
    remove at least as many parameters (Lagrangian argument, exact when units are independent)."""
    geo = LayerGeometry(hidden=3, num_heads=2, num_kv_heads=2, head_dim=2, intermediate=3)
    layers = [_independent_layer(s, geo) for s in (0, 1)]
    units, per_unit = [], []  # (layer, kind, index), (cost, error alone)
    lus = []
    for i, (og, ow, dg, dw) in enumerate(layers):
        heads, channels = layer_error_scores(og, ow, dg, dw, geo, gqa="groups", damp=0.1, per_step=1, norm="absolute")
        a, cost, fixed = attention_units(heads, geo, "groups")
        lus.append(LayerUnits(a, cost, channels, geo.channel_params, fixed))
        for h in range(2):
            units.append((i, 0, h))
            per_unit.append((cost, refit_error(og, ow, [2 * h, 2 * h + 1], 0.1)))
        for c in range(3):
            units.append((i, 1, c))
            per_unit.append((geo.channel_params, refit_error(dg, dw, [c], 0.1)))
    for ratio in (0.2, 0.35, 0.5, 0.7):
        sel = select_units(lus, ratio, head_scaling="error", min_attn=0, min_mlp=0)
        pruned = set()
        for i in range(2):
            pruned |= {(i, 0, h) for h in range(2) if h not in sel.kept_attn[i].tolist()}
            pruned |= {(i, 1, c) for c in range(3) if c not in sel.kept_mlp[i].tolist()}
        ours = sum(e for u, (_, e) in zip(units, per_unit) if u in pruned)
        assert sum(c for u, (c, _) in zip(units, per_unit) if u in pruned) == sel.params_removed
        best = min(
            sum(per_unit[j][1] for j in s)
            for k in range(len(units) + 1)
            for s in itertools.combinations(range(len(units)), k)
            if sum(per_unit[j][0] for j in s) >= sel.params_removed
        )
        assert ours == pytest.approx(best, rel=1e-9)


def test_layer_norm_divides_by_the_output_energy():
    geo = LayerGeometry(hidden=3, num_heads=2, num_kv_heads=2, head_dim=2, intermediate=3)
    og, ow, dg, dw = _independent_layer(0, geo)
    opts = dict(gqa="groups", damp=0.1, per_step=1)
    h_abs, c_abs = layer_error_scores(og, ow, dg, dw, geo, norm="absolute", **opts)
    h_rel, c_rel = layer_error_scores(og, ow, dg, dw, geo, norm="layer", **opts)
    energy = float(torch.einsum("oi,ij,oj->", ow, og, ow) + torch.einsum("oi,ij,oj->", dw, dg, dw))
    assert torch.allclose(h_rel[h_rel.isfinite()] * energy, h_abs[h_abs.isfinite()], rtol=1e-9)
    assert torch.allclose(c_rel * energy, c_abs, rtol=1e-9)
    # scaling a layer's weights leaves its layer-normalised scores unchanged (absolute ones grow 4x)
    h2, c2 = layer_error_scores(og, 2 * ow, dg, 2 * dw, geo, norm="layer", **opts)
    assert torch.allclose(c2, c_rel, rtol=1e-9) and torch.allclose(h2, h_rel, rtol=1e-9)


@pytest.mark.parametrize("gqa", ["groups", "query"])
@pytest.mark.parametrize("order", ["greedy", "numerical"])
def test_prune_with_error_scaling(gqa, order, calib):
    model = tiny_model("llama", 2)
    plan = prune_(model, calibration=calib, ratio=0.4, head_scaling="error", gqa=gqa, error_order=order,
                  error_step=4, progress=False)  # fmt: skip
    assert abs(plan.achieved["params_ratio"] - 0.4) < 0.02
    assert plan.options["head_scaling"] == "error" and plan.options["error_order"] == order
    assert model(calib[:1]).logits.isfinite().all()
    a, head_dim = plan.achieved, 16  # fp32, 4 heads of 16 in a 64-wide model
    assert a["kv_bytes_per_token"] == 4 * 2 * head_dim * sum(len(layer.kv_heads) for layer in plan.layers)
    assert a["kv_bytes_per_token_dense"] == 4 * 2 * head_dim * 2 * 3
    flops = sum(2 * (len(p.heads) + len(p.kv_heads)) * 2 * head_dim * 64 + 4 * len(p.heads) * head_dim * 2048
                for p in plan.layers)  # fmt: skip
    assert a["attn_flops_per_token"] == flops and a["attn_flops_context"] == 2048


def test_error_options_recorded_only_with_the_error_rule():
    assert "error_step" not in effective_options(0.2, head_scaling="alpha")
    assert effective_options(0.2, head_scaling="error")["error_step"] == 8
    with pytest.raises(NumpruneError, match="head_scaling='error'"):
        prune_(tiny_model(), calibration=torch.zeros(2, 8, dtype=torch.long), ratio=0.2, method="flap",
               head_scaling="error", progress=False)  # fmt: skip
    with pytest.raises(NumpruneError, match="error_step"):
        effective_options(0.2, head_scaling="error", error_step=0)


def _dense_layer(seed, geo):
    g = torch.Generator().manual_seed(seed)
    d_o = geo.num_heads * geo.head_dim

    def inputs(d):
        f64 = torch.float64
        return torch.randn(64, d, generator=g, dtype=f64) @ torch.randn(d, d, generator=g, dtype=f64)

    xo, xd = inputs(d_o), inputs(geo.intermediate)
    o_w = torch.randn(geo.hidden, d_o, generator=g, dtype=torch.float64)
    d_w = torch.randn(geo.hidden, geo.intermediate, generator=g, dtype=torch.float64)
    heads, channels = torch.randn(geo.num_heads, generator=g), torch.randn(geo.intermediate, generator=g)
    return xo.T @ xo / 64, o_w, xd.T @ xd / 64, d_w, heads, channels


@pytest.mark.parametrize("gqa", ["groups", "query"])
def test_split_is_the_least_refit_error_split_of_the_layer_budget(gqa):
    """Oracle: for every budget, best_split's (k_a, k_m) has the least sum of exact output errors after the
    damped refits (lstsq, both projections) over every split that prunes the k lowest-scored units of each
    kind within half a channel."""
    geo = LayerGeometry(hidden=3, num_heads=4, num_kv_heads=2, head_dim=2, intermediate=6)
    og, ow, dg, dw, heads, channels = _dense_layer(4, geo)
    a_err, m_err = layer_error_curves(og, ow, dg, dw, geo, heads, channels, gqa=gqa, damp=0.1, per_step=1)
    units, cost, fixed = attention_units(heads, geo, gqa)
    lu = LayerUnits(units, cost, channels, geo.channel_params, fixed, a_err, m_err)
    q_order = heads.reshape(2, 2).argsort(dim=1) + torch.tensor([[0], [2]])  # query mode: k-th lowest per group

    def exact(k_a, k_m):
        if gqa == "groups":
            removed = [h for kv in units.argsort()[:k_a].tolist() for h in (2 * kv, 2 * kv + 1)]
        else:
            removed = q_order[:, :k_a].reshape(-1).tolist()
        cols = [c for h in removed for c in (2 * h, 2 * h + 1)]
        pruned = channels.argsort()[:k_m].tolist()
        return refit_error(og, ow, cols, 0.1, True) + refit_error(dg, dw, pruned, 0.1, True)

    n_a = units.numel()
    for k_a in range(n_a + 1):
        for k_m in range(7):
            assert float(a_err[k_a] + m_err[k_m]) == pytest.approx(exact(k_a, k_m), rel=1e-8)
    for budget in range(0, n_a * cost + 5 * geo.channel_params, 3):
        k_a, k_m = best_split(lu, budget, n_a, 5)
        assert abs(k_a * cost + k_m * geo.channel_params - budget) <= geo.channel_params / 2
        feasible = [exact(a, round((budget - a * cost) / geo.channel_params)) for a in range(n_a + 1)
                    if 0 <= round((budget - a * cost) / geo.channel_params) <= 5]  # fmt: skip
        assert exact(k_a, k_m) == pytest.approx(min(feasible), rel=1e-8)


def test_channel_curve_is_exact_at_its_steps_and_linear_between():
    geo = LayerGeometry(hidden=3, num_heads=2, num_kv_heads=2, head_dim=2, intermediate=7)
    og, ow, dg, dw, heads, channels = _dense_layer(5, geo)
    _, m3 = layer_error_curves(og, ow, dg, dw, geo, heads, channels, gqa="groups", damp=0.1, per_step=3)
    _, m1 = layer_error_curves(og, ow, dg, dw, geo, heads, channels, gqa="groups", damp=0.1, per_step=1)
    assert m3.shape == (8,) and torch.allclose(m3[[0, 3, 6, 7]], m1[[0, 3, 6, 7]], rtol=1e-9)
    assert m3[4].item() == pytest.approx((2 * m3[3] + m3[6]).item() / 3, rel=1e-12)


def test_split_keeps_alpha_budgets_and_moves_them_to_cheap_heads():
    geo = LayerGeometry(hidden=3, num_heads=2, num_kv_heads=2, head_dim=2, intermediate=8)
    g = torch.Generator().manual_seed(0)
    lus = []
    for layer in range(3):
        heads, channels = torch.rand(2, generator=g) + 1, torch.rand(8, generator=g)  # alpha prunes channels
        units, cost, fixed = attention_units(heads, geo, "groups")
        free = layer == 1  # layer 1's heads cost no error, channels cost 1 each: split prunes its heads
        a_err = torch.zeros(3) if free else torch.tensor([0.0, 1e9, 2e9])
        lus.append(LayerUnits(units, cost, channels, geo.channel_params, fixed, a_err, torch.arange(9.0)))
    alpha = select_units(lus, 0.3, head_scaling="alpha", min_attn=0, min_mlp=0)
    split = select_units(lus, 0.3, head_scaling="split", min_attn=0, min_mlp=0)
    assert abs(split.params_removed - alpha.params_removed) <= geo.channel_params / 2
    assert [k.numel() for k in alpha.kept_attn] == [2, 2, 2]
    assert [k.numel() for k in alpha.kept_mlp] == [5, 3, 4]
    # layer 1's budget is 5 channels (45 params): both heads (48) are within half a channel and cost nothing
    assert [k.numel() for k in split.kept_attn] == [2, 0, 2] and split.kept_mlp[1].numel() == 8
    for i in (0, 2):  # no cheaper heads: the alpha selection, unchanged
        assert torch.equal(split.kept_mlp[i], alpha.kept_mlp[i])
    with pytest.raises(ValueError, match="curves"):
        select_units([LayerUnits(lus[0].attn_scores, 4, lus[0].mlp_scores, 9)], 0.3, head_scaling="split")


@pytest.mark.parametrize("gqa", ["groups", "query"])
def test_prune_with_split_scaling(gqa, calib):
    model = tiny_model("llama", 2)
    plan = prune_(model, calibration=calib, ratio=0.4, head_scaling="split", gqa=gqa, error_step=4, progress=False)
    assert abs(plan.achieved["params_ratio"] - 0.4) < 0.01
    assert plan.options["head_scaling"] == "split" and plan.options["error_step"] == 4
    assert "error_norm" not in plan.options and "error_order" not in plan.options
    assert model(calib[:1]).logits.isfinite().all()
    with pytest.raises(NumpruneError, match="head_scaling='split'"):
        prune_(tiny_model(), calibration=calib, ratio=0.2, method="flap", head_scaling="split", progress=False)


def test_split_is_numericals_default_for_the_global_ranking_only():
    """``split`` re-divides the global ranking's per-layer budgets: the default under ``global``, ``alpha``
    under ``uniform`` (where head scaling changes nothing) unless asked; the paper's reading stays ``alpha``."""
    assert effective_options(0.2, "numerical")["head_scaling"] == "split"
    assert effective_options(0.2, "numerical", allocation="uniform")["head_scaling"] == "alpha"
    assert effective_options(0.2, "numerical", allocation="uniform", head_scaling="split")["head_scaling"] == "split"
    assert effective_options(0.2, "flap")["head_scaling"] == "none"
