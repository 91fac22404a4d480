"""Lightning layer: perplexity loop == perplexity(), callbacks == prune_, input checks, fine-tune after pruning."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from numprune import NumpruneError, PruningPlan, prune_
from numprune.eval.perplexity import perplexity
from numprune.hub import load_model
from numprune.lit import CausalLMModule, CompensationCallback, ScoringCallback, TextDataModule, pruning_callbacks
from tests.lit_helpers import make_tiny_dir

OPTS = dict(head_scaling="none")


def trainer(callbacks=(), **kw):
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
        **kw,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dir(tmp_path_factory.mktemp("lit"))


def setup(tiny, **data):
    path, text = tiny
    module = CausalLMModule(str(path), dtype="fp32")
    args = dict(calib=str(text), nsamples=6, seqlen=32, evals=[str(text)], eval_seqlen=32, max_windows=5, seed=3)
    return module, TextDataModule(str(path), **{**args, **data})


def test_validation_ppl_equals_perplexity_function(tiny):
    module, dm = setup(tiny, evals=[str(tiny[1]), str(tiny[1])], batch_size=2)
    out = trainer().validate(module, datamodule=dm, verbose=False)[0]
    windows, _ = dm.eval_set(str(tiny[1]))
    expect = perplexity(load_model(str(tiny[0]))[0], windows, progress=False)
    assert out["val/ppl"] == pytest.approx(expect["ppl"], rel=1e-6)
    assert out["val/windows"] == 5 and out["val/tokens"] == expect["tokens"] == 5 * 31


def test_callbacks_equal_prune_and_run_once(tiny):
    module, dm = setup(tiny)
    cbs = pruning_callbacks(0.4, **OPTS)
    assert [type(c) for c in cbs] == [ScoringCallback, CompensationCallback]
    t = trainer(cbs)
    t.validate(module, datamodule=dm, verbose=False)
    ref = load_model(str(tiny[0]))[0]
    calib, _ = dm.calibration()
    plan = prune_(ref, ratio=0.4, calibration=calib, progress=False, **OPTS)
    assert module.plan.layers == plan.layers and module.plan_applied
    for (n, p), (_, q) in zip(module.model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=n)
    # once per run: validating again neither re-scores nor re-prunes
    before = copy.deepcopy(module.model.state_dict())
    t.validate(module, datamodule=dm, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in module.model.state_dict().items())


@pytest.mark.parametrize("method", ["slicegpt", "depth"])
def test_callbacks_run_a_transform_method_like_prune(tiny, tmp_path, method):
    """slicegpt / depth rewrite the model in ScoringCallback; CompensationCallback records the plan once."""
    module, dm = setup(tiny)
    cbs = pruning_callbacks(0.3, method=method, plan_path=str(tmp_path / "plan.json"))
    t = trainer(cbs)
    t.validate(module, datamodule=dm, verbose=False)
    ref = load_model(str(tiny[0]))[0]
    plan = prune_(ref, ratio=0.3, calibration=dm.calibration()[0], method=method, progress=False)
    assert module.plan_applied and module.plan.transform == plan.transform
    assert PruningPlan.load(tmp_path / "plan.json").transform == plan.transform
    for (n, p), (_, q) in zip(module.model.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=n)
    before = copy.deepcopy(module.model.state_dict())
    t.validate(module, datamodule=dm, verbose=False)  # once per run
    assert all(torch.equal(before[k], v) for k, v in module.model.state_dict().items())


def test_eager_validation_of_callback_arguments():
    with pytest.raises(NumpruneError, match="ratio"):
        ScoringCallback(1.5)
    with pytest.raises(NumpruneError, match="unknown method"):
        pruning_callbacks(0.2, method="nope")
    with pytest.raises(NumpruneError, match="compensation"):
        ScoringCallback(0.2, compensation="maybe")


def test_compensation_without_plan_stops_clearly(tiny):
    module, dm = setup(tiny)
    with pytest.raises(NumpruneError, match="no pruning plan"):
        trainer([CompensationCallback()]).validate(module, datamodule=dm, verbose=False)


def test_plan_of_another_model_is_refused(tiny, tmp_path):
    other_path, _ = make_tiny_dir(tmp_path, kv_heads=2, seed=1)
    other = load_model(str(other_path))[0]
    module, dm = setup(tiny)
    module.plan = prune_(other, ratio=0.3, calibration=dm.calibration()[0], progress=False)
    with pytest.raises(NumpruneError, match="weights differ"):
        trainer([CompensationCallback()]).validate(module, datamodule=dm, verbose=False)
    gqa_path, _ = make_tiny_dir(tmp_path, kv_heads=4)
    module.plan = prune_(load_model(str(gqa_path))[0], ratio=0.3, calibration=dm.calibration()[0], progress=False)
    with pytest.raises(NumpruneError, match="does not fit this model"):
        trainer([CompensationCallback()]).validate(module, datamodule=dm, verbose=False)


def test_saved_plan_applies_through_compensation_callback(tiny, tmp_path):
    module, dm = setup(tiny)
    ref = load_model(str(tiny[0]))[0]
    prune_(ref, ratio=0.3, calibration=dm.calibration()[0], progress=False).save(tmp_path / "plan.json")
    module.configure_model()
    module.plan = PruningPlan.load(tmp_path / "plan.json")
    trainer([CompensationCallback()]).validate(module, datamodule=dm, verbose=False)
    ids = dm.calibration()[0][:2]
    torch.testing.assert_close(module.model(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_pruned_under_inference_mode_then_fine_tuned(tiny):
    module, dm = setup(tiny, batch_size=2)
    trainer(pruning_callbacks(0.4, **OPTS), inference_mode=True).validate(module, datamodule=dm, verbose=False)
    assert module.plan_applied
    assert not any(p.is_inference() for p in module.model.parameters())
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    module.hparams.lr = 1e-2
    trainer(max_steps=2, num_sanity_val_steps=0, limit_val_batches=0).fit(module, datamodule=dm)
    changed = [n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])]
    assert "model.layers.0.self_attn.o_proj.weight" in changed and "model.layers.0.mlp.down_proj.weight" in changed
    assert module.model.model.layers[0].mlp.down_proj.weight.shape[1] == len(module.plan.layers[0].channels)


def test_flap_without_compensation_needs_no_calibration_in_the_compensation_callback(tiny):
    """FLAP with compensation='none' only slices: the callback applies a saved plan without calibration data
    (its repair needs no statistics), and the result is the plain slice of prune_."""
    module, dm = setup(tiny)
    ref = load_model(str(tiny[0]))[0]
    plan = prune_(ref, ratio=0.3, calibration=dm.calibration()[0], method="flap", compensation="none", progress=False)
    module.configure_model()
    module.plan = PruningPlan.from_dict(plan.to_dict())
    dm.calibration = None  # any attempt to read calibration windows fails
    trainer([CompensationCallback()]).validate(module, datamodule=dm, verbose=False)
    for (n, p), (_, q) in zip(module.model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=n)
    assert all(lin.bias is None for layer in module.model.model.layers for lin in (layer.mlp.down_proj,))


def test_a_run_without_validation_batches_is_pruned_too(tiny):
    """Only evaluators (zero-shot, speed), no perplexity sets: Lightning skips the validation loop and its hooks,
    and the model must still be pruned before the evaluators see it."""
    module, dm = setup(tiny, evals=[])
    trainer(pruning_callbacks(0.4, **OPTS)).validate(module, datamodule=dm, verbose=False)
    assert module.plan_applied and module.plan.achieved["channels_pruned"] > 0
    assert sum(p.numel() for p in module.model.parameters()) == module.plan.achieved["model_params_after"]


def test_pruning_inside_fit_is_refused(tiny):
    """Surgery inside trainer.fit would leave the optimizer on the dense tensors: refused with a clear message."""
    module, dm = setup(tiny, batch_size=2)
    with pytest.raises(NumpruneError, match=r"not inside trainer.fit"):
        trainer(pruning_callbacks(0.4, **OPTS), max_steps=1, limit_val_batches=1).fit(module, datamodule=dm)
    assert module.plan is None
