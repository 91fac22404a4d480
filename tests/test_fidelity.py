"""Each baseline pinned to its official code on tiny layers with hand-computed values (issue 10; docs/quality.md,
"Fidelity to the official code")."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from numprune import prune_
from numprune.adapters import get_adapter
from numprune.calibrate import GramAccumulator, InputStats
from numprune.methods import METHODS, effective_options, get_method
from numprune.methods.flap import flap_channel_scores, flap_head_scores
from numprune.methods.llm_pruner import pruned_layers
from numprune.methods.numerical import PAPER_READING
from numprune.methods.simple import wanda_sp_scores
from numprune.methods.slimgpt import damped_inverse, group_sizes, grouped_cholesky_error, log_increasing_ratios
from numprune.select import LayerUnits, select_units, unit_count
from tests.conftest import tiny_model


def _identity_stats(n: int) -> InputStats:
    """Inputs of zero mean and unit variance per channel (``gram = I``)."""
    return InputStats(gram=torch.eye(n, dtype=torch.float64), mean=torch.zeros(n, dtype=torch.float64), count=1)


def test_unit_counts_floor_as_the_official_codes():
    assert [unit_count(x, "floor") for x in (1.5, 3.5, 0.3 * 10, 0.6)] == [1, 3, 3, 0]  # int(ratio * n)
    assert [unit_count(x, "nearest") for x in (1.6, 3.4, 0.6)] == [2, 3, 1]
    layer = LayerUnits(attn_scores=torch.arange(3.0), attn_cost=10, mlp_scores=torch.arange(10.0), mlp_cost=1)
    for rounding, attn, mlp in (("floor", 1, 3), ("nearest", 2, 4)):
        sel = select_units([layer], 0.35, ratio_of="units", allocation="uniform", rounding=rounding)
        assert 3 - len(sel.kept_attn[0]) == min(attn, 1) and 10 - len(sel.kept_mlp[0]) == mlp
        sel = select_units([layer], 0.5, ratio_of="units", allocation="uniform", rounding=rounding)
        assert 3 - len(sel.kept_attn[0]) == attn  # 1.5 units: int() gives 1, round() 2


@pytest.mark.parametrize("method", ["wanda-sp", "mag-sp", "llm-pruner-all", "magnitude", "random"])
def test_uniform_baselines_prune_int_ratio_times_heads_and_channels(calib, method):
    # 4 heads and 96 channels a layer at 40% of units: int(1.6) = 1 head and int(38.4) = 38 channels per layer
    plan = prune_(tiny_model("llama", 4), calibration=calib, ratio=0.4, method=method, ratio_of="units", progress=False)
    assert [len(p.heads) for p in plan.layers] == [3, 3, 3]
    assert [len(p.channels) for p in plan.layers] == [58, 58, 58]
    assert plan.options["rounding"] == "floor"


def test_flap_attention_score_is_squared_channel_standardised_and_averaged_per_head():
    # channel WIFV = var * ||W_:j||^2 = [1, 2, 3, 4]; squared [1, 4, 9, 16], mean 7.5, N-1 variance 129/3 = 43;
    # head means of the standardised channels: (-6.5 - 3.5) / 2 / sqrt(43) and (1.5 + 8.5) / 2 / sqrt(43)
    w = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]).sqrt())
    heads = flap_head_scores(_identity_stats(4), w, num_heads=2)
    expect = torch.tensor([-5.0, 5.0], dtype=torch.float64) / math.sqrt(43.0)
    torch.testing.assert_close(heads, expect)
    # MLP channels: WIFV unsquared, standardised over channels: (c - 2.5) / sqrt(5 / 3)
    channels = flap_channel_scores(_identity_stats(4), w)
    torch.testing.assert_close(
        channels, (torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) - 2.5) / math.sqrt(5 / 3)
    )


def test_flap_squaring_changes_which_head_goes():
    # head A's channels have WIFV [0, 5] (sum 5), head B's [3, 3] (sum 6): unsquared, A goes; squared (mean 12.5
    # against 9), B goes, as the official code decides
    w = torch.diag(torch.tensor([0.0, 5.0, 3.0, 3.0]).sqrt())
    heads = flap_head_scores(_identity_stats(4), w, num_heads=2)
    assert heads[1] < heads[0]


def test_flap_defaults_are_the_official_command():
    opts = effective_options(0.2, "flap")
    assert (opts["allocation"], opts["head_scaling"], opts["compensation"]) == ("global", "none", "dense")


def test_mag_sp_is_flap_column_norms_by_hand():
    model = tiny_model("llama", 4, layers=1)
    scores = get_method("mag-sp").score_model(model, get_adapter(model), None, None)
    a, m = model.model.layers[0].self_attn, model.model.layers[0].mlp
    expect_h1 = sum(float(a.o_proj.weight[:, j].detach().norm()) for j in range(16, 32))  # head 1 = columns 16..31
    assert abs(float(scores[0].heads[1]) - expect_h1) < 1e-5 * expect_h1
    assert abs(float(scores[0].channels[7]) - float(m.down_proj.weight[:, 7].norm())) < 1e-6


def _layer_inputs(model, calib, index: int) -> dict[str, InputStats]:
    """Input statistics of layer ``index``'s o_proj / down_proj over whole-model forwards of the samples."""
    layer = model.model.layers[index]
    accs = {"o_proj": GramAccumulator("o"), "down_proj": GramAccumulator("d")}
    hooks = [
        mod.register_forward_hook(lambda _m, args, _out, n=name: accs[n].add_batch(args[0]))
        for name, mod in (("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj))
    ]
    with torch.no_grad():
        for row in calib:
            model(row[None])
    for h in hooks:
        h.remove()
    return {k: v.stats() for k, v in accs.items()}


def _wanda_keep(model, stats: dict[str, InputStats], index: int, ratio: float) -> tuple[list[int], list[int]]:
    """The official Wanda-sp choice for one layer (int(r * n) lowest heads / channels go), by hand."""
    a, m = model.model.layers[index].self_attn, model.model.layers[index].mlp
    heads = wanda_sp_scores(stats["o_proj"], a.o_proj.weight).reshape(4, 16).sum(1)
    channels = wanda_sp_scores(stats["down_proj"], m.down_proj.weight)
    keep_h = sorted(heads.argsort()[int(ratio * 4) :].tolist())
    keep_c = sorted(channels.argsort()[int(ratio * 96) :].tolist())
    return keep_h, keep_c


def test_wanda_sp_scores_each_layer_on_the_inputs_through_the_pruned_layers(calib):
    model, ratio = tiny_model("llama", 4, layers=2), 0.4
    plan = prune_(
        copy.deepcopy(model), calibration=calib, ratio=ratio, method="wanda-sp", ratio_of="units", progress=False
    )
    # layer 0 sees the dense inputs
    dense0 = _layer_inputs(model, calib, 0)
    assert (plan.layers[0].heads, plan.layers[0].channels) == _wanda_keep(model, dense0, 0, ratio)
    # by hand: prune layer 0 as chosen (zeroed o_proj / down_proj columns), then score layer 1 on what reaches it
    manual = copy.deepcopy(model)
    with torch.no_grad():
        layer0 = manual.model.layers[0]
        for h in set(range(4)) - set(plan.layers[0].heads):
            layer0.self_attn.o_proj.weight[:, h * 16 : (h + 1) * 16] = 0
        layer0.mlp.down_proj.weight[:, sorted(set(range(96)) - set(plan.layers[0].channels))] = 0
    sequential1, dense1 = _layer_inputs(manual, calib, 1), _layer_inputs(model, calib, 1)
    assert not torch.allclose(sequential1["down_proj"].gram, dense1["down_proj"].gram, rtol=1e-3)
    assert (plan.layers[1].heads, plan.layers[1].channels) == _wanda_keep(model, sequential1, 1, ratio)
    down = model.model.layers[1].mlp.down_proj.weight
    seq_scores, dense_scores = (
        wanda_sp_scores(sequential1["down_proj"], down),
        wanda_sp_scores(dense1["down_proj"], down),
    )
    assert (seq_scores - dense_scores).abs().max() > 1e-3 * dense_scores.abs().max()  # not the dense pass's scores


def test_llm_pruner_official_layer_range_and_taylor_samples(calib):
    assert pruned_layers(32) == (4, 30) and pruned_layers(30) == (4, 28)
    ratios = get_method("llm-pruner").layer_ratios(0.2, 30)
    assert ratios[:4] == [0.0] * 4 and ratios[28:] == [0.0, 0.0] and abs(sum(ratios) / 30 - 0.2) < 1e-12
    settings = effective_options(0.2, "llm-pruner")["method_settings"]
    assert (settings["taylor_samples"], settings["taylor_seqlen"], settings["taylor"]) == (10, 64, "e1")
    # the Taylor pass reads the first 10 samples' first 64 tokens and nothing else
    long = torch.randint(0, 128, (12, 80), generator=torch.Generator().manual_seed(3))
    model = tiny_model("llama", 2, layers=1)
    adapter = get_adapter(model)
    meth = get_method("llm-pruner")
    a = meth.score_model(model, adapter, long, None)
    b = meth.score_model(model, adapter, long[:10, :64].clone(), None)
    torch.testing.assert_close(a[0].channels, b[0].channels)


def test_slimgpt_dynamic_group_size_and_schedule():
    assert group_sizes(300) == [64, 64, 64, 64, 44]  # (300 - 512) // 2 < 64: batches of 64
    assert group_sizes(2752) == [1024, 304] + [64] * 22 + [16]  # LLaMA-7B's MLP at 25%
    r = log_increasing_ratios(0.2, 32)  # the README's min 0.0625, max 0.25, up to the 1:4 shape's mean
    assert abs(r[0] - 0.0625) < 2e-4 and abs(r[-1] - 0.25) < 2e-3 and abs(sum(r) / 32 - 0.2) < 1e-12
    assert r[0] / r[-1] == pytest.approx(0.25) and all(a < b for a, b in itertools.pairwise(r))
    assert get_method("slimgpt").layer_ratios(0.5, 30)[0] == pytest.approx(0.25 * max(log_increasing_ratios(0.5, 30)))


def test_slimgpt_grouped_cholesky_error_by_hand():
    # Hinv block [[2, 1], [1, 2]]: L = [[sqrt 2, 0], [1/sqrt 2, sqrt 1.5]]; error = |w_0|^2 / 2 + |w_1|^2 / 1.5
    hinv = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    expect = 10.0 / 2 + 4.0 / 1.5
    assert float(grouped_cholesky_error(w, hinv, torch.tensor([0, 1]))) == pytest.approx(expect)


def test_slimgpt_undamped_singular_hessian_gets_a_tiny_jitter():
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # rank 3 of 6
    gram = x.T @ x / 3
    gram[5, :] = gram[:, 5] = 0  # a dead channel
    hinv = damped_inverse(gram, 0.0)
    assert torch.isfinite(hinv).all() and hinv[5, 5] == pytest.approx(1.0)
    assert float(torch.linalg.eigvalsh(hinv).min()) > 0  # positive definite: the greedy OBS can run on it
    # a full-rank Hessian is inverted as it is: no damping, no jitter
    full = x.T @ x / 3 + torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
    torch.testing.assert_close(damped_inverse(full, 0.0) @ full, torch.eye(6, dtype=torch.float64))


def test_slimgpt_defaults_are_the_official_command():
    opts = effective_options(0.2, "slimgpt")
    assert (opts["damp"], opts["compensation"], opts["rounding"], opts["allocation"]) == (
        0.0, "sequential", "nearest", "uniform"
    )  # fmt: skip
    assert get_method("slimgpt").scoring == "sequential" and get_method("slimgpt").mlp_after_attention


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_row_records_the_complete_effective_options(method):
    opts = effective_options(0.2, method)
    from numprune.config import PruneConfig
    from numprune.methods import NOT_RECORDED

    # every field that changes what a run computes (NOT_RECORDED: progress bars, where activations are kept)
    assert set(NOT_RECORDED) == {"ratio", "method", "progress", "offload_activations"}
    fields = {f for f in PruneConfig.__dataclass_fields__} - set(NOT_RECORDED)
    if opts["head_scaling"] != "error":  # the error rule's own options are recorded only when it runs
        fields -= {"error_order", "error_step", "error_norm"}
    assert fields <= set(opts)
    assert all(opts[k] is not None for k in ("allocation", "head_scaling", "compensation", "rounding"))


def test_paper_reading_is_one_definition():
    opts = effective_options(0.2, "numerical", **PAPER_READING)
    assert (opts["gqa"], opts["compensation"], opts["damp"], opts["allocation"]) == ("groups", "dense", 0.1, "global")
