"""Baselines behind the one pipeline: FLAP, Wanda-sp, magnitude, random, LLM-Pruner, SlimGPT (issue 3)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import numprune
from numprune import prune_
from numprune.adapters import get_adapter
from numprune.adapters.base import LayerGeometry
from numprune.calibrate import GramAccumulator, InputStats
from numprune.compensate import compensate
from numprune.methods import METHODS, get_method
from numprune.methods.flap import bias_compensation
from numprune.methods.llm_pruner import loss_gradients, taylor_scores
from numprune.methods.simple import coupled_sq_norms, wanda_sp_scores
from numprune.methods.slimgpt import damped_inverse, log_increasing_ratios, obs_remove_, obs_update
from tests.conftest import tiny_model


def _stats(x: torch.Tensor) -> InputStats:
    acc = GramAccumulator("x")
    acc.add_batch(x)
    return acc.stats()


# the head/channel methods (slicegpt and depth rewrite the model: no masked form; tests/test_slicegpt.py, test_depth.py)
@pytest.mark.parametrize("method", sorted(m for m in METHODS if get_method(m).scoring != "transform"))
def test_every_method_masked_equals_physical(model, calib, inputs, method):
    masked = copy.deepcopy(model)
    plan = prune_(model, calibration=calib, ratio=0.3, method=method, progress=False)
    prune_(masked, calibration=calib, ratio=0.3, method=method, progress=False, mask_only=True)
    assert plan.achieved["channels_pruned"] > 0
    assert abs(plan.achieved["params_ratio"] - 0.3) < 0.05  # every method at the same parameter ratio
    torch.testing.assert_close(model(inputs).logits, masked(inputs).logits, atol=1e-5, rtol=1e-5)


def test_flap_bias_keeps_the_output_mean_of_a_projection():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64) + torch.arange(6.0, dtype=torch.float64)
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    keep = torch.tensor([0, 3, 5])
    bias = bias_compensation(_stats(x), w, keep)
    torch.testing.assert_close((x[:, keep] @ w[:, keep].T + bias).mean(0), (x @ w.T).mean(0))
    assert not torch.allclose((x[:, keep] @ w[:, keep].T).mean(0), (x @ w.T).mean(0))  # the bias is needed


def test_flap_model_keeps_layer0_attention_output_mean_and_reloads(calib, inputs, tmp_path):
    model = tiny_model("llama", 2)
    dense = copy.deepcopy(model)

    def o_proj_mean(m):
        outs = []
        h = m.model.layers[0].self_attn.o_proj.register_forward_hook(lambda _m, _a, out: outs.append(out))
        with torch.no_grad():
            for row in calib:
                m(row[None])
        h.remove()
        return torch.cat([o.reshape(-1, o.shape[-1]) for o in outs]).double().mean(0)

    plan = prune_(model, calibration=calib, ratio=0.4, method="flap", progress=False)
    assert plan.layers[0].heads != list(range(4)) or len(plan.layers[0].channels) < 96
    assert model.model.layers[0].self_attn.o_proj.bias is not None
    # Layer 0 sees the dense inputs, so its attention output mean on the calibration data is the dense one.
    torch.testing.assert_close(o_proj_mean(model), o_proj_mean(dense), atol=1e-5, rtol=1e-5)
    out = numprune.save_pruned(model, tmp_path / "flap", plan)
    loaded = numprune.load_pruned(out)
    torch.testing.assert_close(loaded(inputs).logits, model(inputs).logits, atol=0, rtol=0)


def test_wanda_sp_scores_by_hand():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    stats = InputStats(gram=torch.tensor([[4.0, 0.0], [0.0, 9.0]], dtype=torch.float64), mean=torch.zeros(2), count=1)
    # mean_i |W_ij| * sqrt(G_jj): channel 0: 2 * 2 = 4; channel 1: 1 * 3 = 3
    torch.testing.assert_close(wanda_sp_scores(stats, w), torch.tensor([4.0, 3.0], dtype=torch.float64))


def test_magnitude_scores_by_hand():
    model = tiny_model("llama", 2, layers=1)
    adapter, layer = get_adapter(model), model.model.layers[0]
    geo = adapter.geometry(layer)  # 4 heads of 16, 2 KV heads, 96 channels
    heads, channels = coupled_sq_norms(adapter, layer, geo)
    a, m = layer.self_attn, layer.mlp
    h, kv = 3, 1  # head 3 uses KV head 1
    sl, kvsl = slice(h * 16, (h + 1) * 16), slice(kv * 16, (kv + 1) * 16)
    expect_h = (
        a.q_proj.weight[sl].pow(2).sum()
        + a.o_proj.weight[:, sl].pow(2).sum()
        + (a.k_proj.weight[kvsl].pow(2).sum() + a.v_proj.weight[kvsl].pow(2).sum()) / 2
    )
    expect_c = (
        m.gate_proj.weight[7].pow(2).sum() + m.up_proj.weight[7].pow(2).sum() + m.down_proj.weight[:, 7].pow(2).sum()
    )
    torch.testing.assert_close(heads[h].float(), expect_h, rtol=1e-5, atol=0)
    torch.testing.assert_close(channels[7].float(), expect_c, rtol=1e-5, atol=0)


def test_random_is_seeded(calib):
    plans = [
        prune_(tiny_model("llama", 2), calibration=calib, ratio=0.3, method="random", progress=False, seed=s)
        for s in (0, 0, 1)
    ]
    assert plans[0].layers == plans[1].layers and plans[0].layers != plans[2].layers


@pytest.mark.parametrize("mode", ["e1", "v"])
def test_llm_pruner_taylor_matches_finite_differences(calib, mode):
    model = tiny_model("llama", 2, layers=1).double()
    adapter, layer = get_adapter(model), model.model.layers[0]
    samples = calib[:1] if mode == "e1" else calib[:3]  # e1: one finite difference per weight of the channel
    for p in model.parameters():
        p.grad = None
    loss_gradients(model, adapter, samples)
    scores = taylor_scores(adapter, layer, adapter.geometry(layer), mode)

    def loss() -> float:
        with torch.no_grad():
            total = 0.0
            for row in samples:
                logits = model(row[None]).logits[0, :-1]
                total += float(torch.nn.functional.cross_entropy(logits, row[1:]))
            return total

    def directional(weight, index, eps=1e-2) -> float:  # d/dt L(w + t e) with e = w on the slice, = g . w
        base = weight.data.clone()
        weight.data[index] = base[index] * (1 + eps)
        up = loss()
        weight.data[index] = base[index] * (1 - eps)
        down = loss()
        weight.data.copy_(base)
        return (up - down) / (2 * eps)

    m, j = layer.mlp, 5
    if mode == "v":
        expect = sum(
            abs(directional(w, idx))
            for w, idx in ((m.gate_proj.weight, (j,)), (m.up_proj.weight, (j,)), (m.down_proj.weight, (slice(None), j)))
        )
    else:  # element-wise: the sum over the channel's single weights of |g_k w_k|, each by its own difference
        elements = [(m.gate_proj.weight, (j, k)) for k in range(m.gate_proj.weight.shape[1])]
        elements += [(m.up_proj.weight, (j, k)) for k in range(m.up_proj.weight.shape[1])]
        elements += [(m.down_proj.weight, (k, j)) for k in range(m.down_proj.weight.shape[0])]
        expect = sum(abs(directional(w, idx, eps=0.5)) for w, idx in elements)
    assert abs(float(scores.channels[j]) - expect) < 2e-2 * abs(expect)  # float32 RMSNorm: FD to ~1e-3


def test_slimgpt_greedy_updates_equal_closed_form():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen, dtype=torch.float64) @ torch.randn(8, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    gram = x.T @ x / 300
    keep = torch.tensor([1, 2, 4, 7])
    for damp in (0.0, 0.01):
        seq, hinv = w.clone(), damped_inverse(gram, damp)
        for col in (6, 0, 5, 3):  # one column at a time, in any order
            obs_remove_(seq, hinv, torch.tensor([col]))
        closed = obs_update(gram, w, keep, damp)
        torch.testing.assert_close(seq[:, keep], closed)
    # Undamped, the OBS update is the least-squares refit of the kept columns (Eq. 11).
    torch.testing.assert_close(obs_update(gram, w, keep, 0.0), compensate(gram, w, keep, damp=0.0))


def test_slimgpt_log_increasing_ratios():
    r = log_increasing_ratios(0.5, 30)
    assert all(a < b for a, b in itertools.pairwise(r)) and max(r) <= 0.95 and r[0] == pytest.approx(max(r) / 4)
    assert abs(sum(r) / 30 - 0.5) < 1e-9


def test_method_defaults():
    assert get_method("flap").default_head_scaling == "none" and get_method("flap").adds_bias
    assert get_method("llm-pruner-v").mode == "v" and get_method("llm-pruner-v").name == "llm-pruner-v"
    ratios = get_method("llm-pruner").layer_ratios(0.2, 32)
    assert ratios[:4] == [0.0] * 4 and ratios[30:] == [0.0, 0.0] and abs(sum(ratios) / 32 - 0.2) < 1e-12
    geo = LayerGeometry(hidden=8, num_heads=2, num_kv_heads=1, head_dim=4, intermediate=6)
    assert geo.group_size == 2


@pytest.mark.parametrize("method", ["numerical", "flap"])
def test_shared_dense_statistics_give_the_same_model(calib, inputs, method):
    a, b = tiny_model("llama", 2), tiny_model("llama", 2)
    stats = numprune.prune.dense_statistics(b, calib)
    plan_a = prune_(a, calibration=calib, ratio=0.3, method=method, progress=False)
    plan_b = prune_(b, calibration=calib, ratio=0.3, method=method, progress=False, dense_stats=stats)
    assert plan_a.layers == plan_b.layers
    torch.testing.assert_close(a(inputs).logits, b(inputs).logits, atol=1e-6, rtol=1e-6)
