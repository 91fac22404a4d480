"""Pruning cost: stage timings, float32 Gram products, the one-forward sequential repair, offloaded activations."""

from __future__ import annotations

import copy

import pytest
import torch

from numprune import prune_, timing
from numprune.adapters import get_adapter
from numprune.calibrate import LayerwiseRunner
from numprune.config import make_config
from numprune.linalg import cholesky_solve, symmetric_gram, tril_matmul
from numprune.methods import get_method
from numprune.passes import cut_layer_
from numprune.prune import output_bias, plan_pruning
from numprune.replay import Replay
from numprune.stats import GramAccumulator
from tests.conftest import tiny_model


def test_gram_float32_products_match_a_float64_oracle():
    """Products in float32, sums in float64: the Gram matrix and mean agree with float64 to ~1e-6 relative,
    also for activations with a large common offset (the case that loses digits first)."""
    gen = torch.Generator().manual_seed(0)
    acc = GramAccumulator("x")
    xs = [torch.randn(256, 48, generator=gen) * torch.linspace(0.1, 30, 48) + 5.0 for _ in range(16)]
    for x in xs:
        acc.add_batch(x.to(torch.bfloat16).float())
    ref = torch.cat([x.to(torch.bfloat16).double() for x in xs])
    st = acc.stats()
    gram, mean = ref.T @ ref / ref.shape[0], ref.mean(0)
    assert st.count == 16 * 256 and st.gram.dtype == torch.float64
    assert (st.gram - gram).abs().max() / gram.abs().max() < 2e-6
    assert torch.allclose(st.mean, mean, rtol=1e-6, atol=0)


def test_gram_of_bf16_inputs_and_float64_inputs():
    x = torch.randn(64, 8, dtype=torch.float64)
    acc64 = GramAccumulator("x")
    acc64.add_batch(x)
    assert torch.allclose(acc64.stats().gram, x.T @ x / 64, rtol=1e-12)  # float64 stays float64
    acc16 = GramAccumulator("x")
    acc16.add_batch(x.to(torch.bfloat16))
    y = x.to(torch.bfloat16).double()
    assert torch.allclose(acc16.stats().gram, y.T @ y / 64, rtol=1e-5)


@pytest.mark.parametrize(("blocks", "buffer"), [(1, 2048), (3, 0), (4, 50), (4, 30)])
@pytest.mark.parametrize("rows", [None, [11, 2, 30, 7, 0, 19, 25, 4, 16, 9]])
def test_block_triangular_gram_equals_the_full_product(blocks, buffer, rows):
    """Only the upper block triangle of the symmetric part is multiplied (the rest mirrored), samples are
    multiplied when a buffer fills (or at once when larger than it): the result is the float64 oracle
    ``X[:, rows]^T X`` (rows in their given order, columns in the original one), exactly symmetric in its
    ``rows x rows`` part, also with samples added after a first ``stats()``."""
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(40, 32, generator=gen, dtype=torch.float64) for _ in range(3)]
    keep = None if rows is None else torch.tensor(rows)
    acc = GramAccumulator("x", rows=keep, gram_blocks=blocks, buffer_tokens=buffer)
    for x in xs[:2]:
        acc.add_batch(x)
    acc.stats()
    acc.add_batch(xs[2])
    st = acc.stats()
    ref = torch.cat(xs)
    want = ref.T @ ref / ref.shape[0]
    want = want if keep is None else want[keep]
    assert st.gram.shape == want.shape
    assert torch.allclose(st.gram, want, rtol=1e-12, atol=1e-12)
    sym = st.gram if keep is None else st.gram[:, keep]
    assert torch.equal(sym, sym.T)


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_symmetric_gram_is_the_exact_product_and_symmetric(blocks):
    x = torch.randn(37, 23, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = symmetric_gram(x, blocks)
    assert torch.equal(y, y.T)
    assert torch.allclose(y, x.T @ x, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("blocks", [1, 3, 4])
@pytest.mark.parametrize("diagonal", [0, -1])
def test_tril_matmul_is_the_masked_product(blocks, diagonal):
    """Oracle: ``torch.tril(a, diagonal) @ b`` for a full ``a`` (the entries above the mask must not count)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(29, 29, dtype=torch.float64, generator=gen)
    b = torch.randn(29, 5, dtype=torch.float64, generator=gen)
    assert torch.allclose(tril_matmul(a, b, diagonal, blocks), torch.tril(a, diagonal) @ b, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError):
        tril_matmul(a, b, diagonal=1)


def test_cholesky_solve_by_triangular_solves_matches_torch():
    """Two triangular solves give ``torch.cholesky_solve``'s values (which copies the factor first), one
    right-hand side or many; and they solve the system (oracle: ``G x = b``)."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(80, 40, dtype=torch.float64, generator=gen)
    g = x.T @ x
    chol = torch.linalg.cholesky(g)
    for b in (
        torch.randn(40, 1, dtype=torch.float64, generator=gen),
        torch.randn(40, 7, dtype=torch.float64, generator=gen),
    ):
        got = cholesky_solve(chol, b)
        assert torch.allclose(got, torch.cholesky_solve(b, chol), rtol=1e-12, atol=1e-12)
        assert torch.allclose(g @ got, b, rtol=1e-9, atol=1e-9)


def _old_sequential_repair(model, calib, plan, cfg):
    """Oracle: the straightforward sequential repair (statistics of o_proj on the layer as it is, cut, a full
    forward for down_proj's statistics through the pruned attention, cut, a third forward for the outputs)."""
    adapter, meth = get_adapter(model), get_method(cfg.method)
    runner = LayerwiseRunner(model, adapter, calib, torch.device("cpu"), progress=False)
    bias = output_bias(model, adapter, meth, cfg)

    def visit(i, layer):
        geo = adapter.geometry(layer)
        first, _ = runner.collect(layer, i, names=("o_proj",))
        cut_layer_(adapter, meth, cfg, layer, geo, plan.layers[i], first, ("attn",), bias)
        second, _ = runner.collect(layer, i, names=("down_proj",))
        cut_layer_(adapter, meth, cfg, layer, geo, plan.layers[i], second, ("mlp",), bias)
        return None

    runner.walk(visit, desc="")
    adapter.finalize(model, [adapter.geometry(layer) for layer in adapter.layers(model)], bias)


@pytest.mark.parametrize("method", ["numerical", "flap"])
@pytest.mark.parametrize("mask_only", [False, True])
def test_sequential_repair_in_one_forward_equals_the_three_forward_oracle(model, calib, method, mask_only):
    opts = dict(compensation="sequential", mask_only=mask_only, progress=False)
    cfg = get_method(method).resolve(make_config(0.4, method, **opts))
    ref = copy.deepcopy(model)
    plan, _ = plan_pruning(ref, calib, cfg)
    _old_sequential_repair(ref, calib, plan, cfg)
    got = prune_(model, ratio=0.4, method=method, calibration=calib, **opts)
    assert got.layers == plan.layers
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize(
    "target, name, refuse",
    [
        (LayerwiseRunner, "_bypass_identity", lambda self, layer, module, index=None: False),
        (Replay, "holds", lambda self, run: False),
    ],
    ids=["bypass", "replay"],
)
def test_a_shortcut_that_does_not_hold_falls_back_to_a_forward(calib, monkeypatch, target, name, refuse):
    """A layer whose output is not ``partial + down_proj(x)`` (bypass), or whose attention cannot be replayed
    from its ``o_proj`` inputs (replay), here: the identity check reports False, is repaired by the plain
    forward, with the same result."""
    model, ref = tiny_model(), tiny_model()
    monkeypatch.setattr(target, name, refuse)
    a = prune_(model, ratio=0.4, calibration=calib, progress=False)
    monkeypatch.undo()
    b = prune_(ref, ratio=0.4, calibration=calib, progress=False)
    assert a.layers == b.layers
    for x, y in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)


def test_bypass_identity_holds_for_llama_layers(model, calib):
    adapter = get_adapter(model)
    runner = LayerwiseRunner(model, adapter, calib, torch.device("cpu"), progress=False)
    layer = adapter.layers(model)[0]
    o_proj, down_proj = adapter.out_projections(layer)
    assert runner._bypass_identity(layer, down_proj)
    assert not runner._bypass_identity(layer, o_proj)  # the MLP reads o_proj's output: no such identity


@pytest.mark.parametrize("compensation", ["sequential", "dense"])
def test_offloaded_activations_give_the_same_plan_and_weights(model, calib, compensation):
    ref = copy.deepcopy(model)
    a = prune_(model, ratio=0.3, calibration=calib, compensation=compensation, offload_activations=True, progress=False)
    b = prune_(ref, ratio=0.3, calibration=calib, compensation=compensation, progress=False)
    assert a.layers == b.layers and "offload_activations" not in a.options  # not a result option: same numbers
    for x, y in zip(model.parameters(), ref.parameters()):
        assert torch.equal(x, y)


def test_stage_timer_records_every_stage_exclusively(calib, tmp_path):
    from numprune import save_pruned

    model = tiny_model()
    with timing.StageTimer() as timer:
        plan = prune_(model, ratio=0.3, calibration=calib, progress=False)
        save_pruned(model, tmp_path / "out", plan)
    for name in ("capture", "forward", "gram", "score", "select", "repair", "surgery", "sequential_forward", "save"):
        assert timer.seconds[name] > 0, name
    assert set(timer.seconds) <= set(timing.STAGES)
    assert plan.timing["stage_gram_seconds"] == pytest.approx(timer.seconds["gram"])
    # exclusive times add up to no more than the wall time of the run
    assert timer.total <= plan.timing["prune_seconds"] + timer.seconds["save"] + 0.05
    # per layer: one dense collect (o_proj + down_proj hooks) and, sequentially, one of each projection; each
    # accumulator is charged once per sample and once for the product of its buffered samples
    assert timer.calls["gram"] == 3 * (2 + 2) * (calib.shape[0] + 1)


def test_stages_cost_nothing_without_a_timer(calib):
    assert timing.active() is None
    assert timing.stage("gram") is timing.stage("score")  # the shared no-op context
    plan = prune_(tiny_model(), ratio=0.3, calibration=calib, progress=False)
    assert not any(k.startswith("stage_") for k in plan.timing)


def test_nested_stages_charge_the_innermost():
    with timing.StageTimer(sync_cuda=False) as t:
        with timing.stage("forward"):
            with timing.stage("gram"):
                pass
    assert set(t.seconds) == {"forward", "gram"} and t.calls == {"forward": 1, "gram": 1}
    assert timing.active() is None


@pytest.mark.parametrize("mask_only", [False, True])
def test_attention_replay_equals_a_forward_through_the_cut_layer(model, calib, mask_only):
    """The second sequential forward replays the attention from the recorded ``o_proj`` inputs: for every sample
    the layer output equals a real forward through the layer whose attention was repaired and cut."""
    cfg = get_method("numerical").resolve(
        make_config(0.4, "numerical", mask_only=mask_only, head_scaling="none", progress=False)
    )
    plan, _ = plan_pruning(copy.deepcopy(model), calib, cfg)
    adapter, meth = get_adapter(model), get_method("numerical")
    runner = LayerwiseRunner(model, adapter, calib, torch.device("cpu"), progress=False)
    i = min(range(len(plan.layers)), key=lambda i: len(plan.layers[i].heads))  # the layer that lost most heads
    for layer in adapter.layers(model)[:i]:
        runner.hidden = runner.forward(layer)
    layer = adapter.layers(model)[i]
    geo = adapter.geometry(layer)
    assert len(plan.layers[i].heads) < geo.num_heads  # the replay is checked on a layer that lost heads
    first, inputs = runner.collect_until(layer, i, "o_proj", keep_inputs=True)
    cut_layer_(adapter, meth, cfg, layer, geo, plan.layers[i], first, ("attn",), False)
    replay = runner.attention_replay(layer, i, inputs, geo, plan.layers[i].heads)
    cols = torch.cat([torch.arange(h * geo.head_dim, (h + 1) * geo.head_dim) for h in plan.layers[i].heads])
    assert torch.equal(replay.cols, cols)
    assert replay is not None and runner.replay_ok
    real = runner.forward(layer, i)
    for k, h in enumerate(runner.hidden):
        replay.attention.forward = replay.one(k)
        try:
            got = runner._run(layer, h, i)
        finally:
            del replay.attention.forward
        assert torch.allclose(got, real[k], rtol=1e-5, atol=1e-6)


def test_sequential_pass_accumulates_only_the_kept_rows_of_down_proj(calib, monkeypatch):
    """The numerical refit reads ``G[K, :]``: the sequential pass hands it down_proj statistics with exactly the
    kept rows (and o_proj's full Gram); the prune equals the three-forward oracle (test above)."""
    seen = []
    repair = get_method("numerical").repair

    def spy(self, stats, weight, keep, cfg):
        seen.append((tuple(stats.gram.shape), None if stats.rows is None else stats.rows.tolist(), keep.tolist()))
        return repair(stats, weight, keep, cfg)

    monkeypatch.setattr(type(get_method("numerical")), "repair", spy)
    plan = prune_(tiny_model(), ratio=0.4, calibration=calib, progress=False)
    down = [s for s in seen if s[1] is not None]
    assert len(down) == len(plan.layers) and len(seen) == 2 * len(plan.layers)
    for (shape, rows, keep), layer in zip(down, plan.layers):
        assert rows == keep == layer.channels and shape == (len(keep), 96)
