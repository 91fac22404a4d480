"""LlamaGen under Lightning: the table3 config end to end on tiny random models, resume, callbacks == prune_.

Everything is offline and random: a tiny LlamaGen GPT and VQ (``random_init``), a Kaiming-initialised Inception
(``save_random_inception``) and a few synthetic "real" images. The numbers mean nothing; the plumbing is real.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from numprune import PruningPlan, prune_
from numprune.cli import main
from numprune.eval.image_metrics import save_random_inception
from numprune.lit import LlamaGenModule, pruning_callbacks
from numprune.lit.llamagen_specs import CalibrationSpec, GenerationSpec, MetricsSpec
from numprune.llamagen.config import GPTConfig
from numprune.llamagen.gpt import build_gpt
from numprune.llamagen.sampling import calibration_tokens, generate_images
from numprune.llamagen.vq import VQConfig, VQModel
from numprune.provenance import count_params
from numprune.results import read_rows, row_key
from numprune.runner import Runner

torch.set_num_threads(1)

CONFIG = Path(__file__).parent.parent / "experiments" / "configs" / "table3_llamagen.yaml"
GPT = dict(dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=10, block_size=16, multiple_of=16)
VQ = dict(codebook_size=64, codebook_embed_dim=4, z_channels=32, ch=32, ch_mult=[1, 1], usage_buffer=16)
METRICS = ["fid", "sfid", "is", "precision", "recall"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A random Inception and 10 synthetic 16x16 "real" images (smooth colour fields)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("litgen")
    weights = save_random_inception(root / "inception.pth")
    real = root / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    low = torch.from_numpy(rng.uniform(0, 255, (10, 3, 4, 4)).astype(np.float32))
    images = torch.nn.functional.interpolate(low, size=16, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    for i, img in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img).save(real / f"{i:02d}.png")
    return weights, real


def tiny_args(assets, results: Path, methods: str = "[numerical]", ratios: str = "[0.0,0.2,0.4]") -> list[str]:
    weights, real = assets
    model = {"name": "tiny", "gpt_model": "GPT-B", "checkpoint": None, "random_init": True, "cfg_scale": 2.0}
    return [
        "run",
        str(CONFIG),
        f"--grid.models={json.dumps([{**model, 'config': GPT}])}",
        f"--model.vq={json.dumps({'checkpoint': None, 'random_init': True, 'config': VQ})}",
        f"--grid.methods={methods}",
        f"--grid.ratios={ratios}",
        "--model.precision=fp32",
        "--model.eval_size=16",
        "--model.calibration.images_per_class=2",
        "--model.calibration.classes=[0,3,5]",
        "--model.calibration.batch_size=4",
        "--model.generation.num_samples=10",
        "--model.generation.batch_size=4",
        "--model.generation.save_png=false",
        f"--model.metrics.reference={real}",
        f"--model.metrics.inception_weights={weights}",
        "--model.metrics.isc_splits=2",
        f"--results={results}",
        "--trainer.accelerator=cpu",
    ]


def test_table3_config_runs_end_to_end_and_resumes(assets, tmp_path, monkeypatch):
    results = tmp_path / "t3.csv"
    args = tiny_args(assets, results)
    real, calls = Runner.run_point, []

    def crash_on_second(self, p):
        calls.append(p.describe())
        if len(calls) == 2:
            raise KeyboardInterrupt  # a crash in the middle of the grid
        return real(self, p)

    monkeypatch.setattr(Runner, "run_point", crash_on_second)
    assert main(args) == 130
    assert {r["method"] for r in read_rows(results)} == {"dense"}
    monkeypatch.setattr(Runner, "run_point", lambda self, p: calls.append(p.describe()) or real(self, p))
    calls.clear()
    assert main(args) == 0
    assert calls == ["numerical ratio=0.2 model=tiny", "numerical ratio=0.4 model=tiny"]  # dense is not rerun

    rows = read_rows(results)
    quality = [r for r in rows if r["metric"] in METRICS]
    assert Counter((r["method"], r["ratio"]) for r in quality) == {("dense", "0.0"): 5, ("numerical", "0.2"): 5,
                                                                   ("numerical", "0.4"): 5}  # fmt: skip
    assert {r["experiment"] for r in rows} == {"table3_llamagen"}
    assert all(np.isfinite(float(r["value"])) for r in quality)
    assert {r["eval_dataset"] for r in quality} == {"real:10"} and {r["eval_windows"] for r in quality} == {"10"}
    pruned = [r for r in rows if r["method"] == "numerical"]
    assert {r["calib_dataset"] for r in pruned} == {"self-generated:2x3"}  # 2 images per class x 3 classes
    assert {r["calib_nsamples"] for r in pruned} == {"6"} and {r["calib_seqlen"] for r in pruned} == {"16"}
    for ratio in ("0.2", "0.4"):
        metrics = {r["metric"] for r in pruned if r["ratio"] == ratio}
        assert {"prune_seconds", "peak_rss_gib"} <= metrics
        row = next(r for r in pruned if r["ratio"] == ratio and r["metric"] == "fid")
        assert abs(float(row["ratio_achieved"]) - float(ratio)) < 0.05
        assert int(row["params_after"]) < int(row["params_before"])
        plan = PruningPlan.load(tmp_path / "t3" / "plans" / f"tiny-numerical-{ratio}-self-generated-2x3-n6.json")
        assert int(row["params_after"]) == plan.achieved["model_params_after"] == expected_params(plan)
    assert len([r for r in rows if r["metric"] == "calib_generate_seconds"]) == 1  # rows reused from the cache
    with np.load(tmp_path / "t3" / "samples" / "tiny-dense-0.npz") as data:
        assert data["arr_0"].shape == (10, 16, 16, 3)

    calls.clear()
    assert main(args) == 0 and calls == []  # finished: nothing recomputed, nothing added
    keys = [row_key(r) for r in read_rows(results)]
    assert len(keys) == len(rows) == len(set(keys))


def expected_params(plan: PruningPlan) -> int:
    """Dense count minus 4 x head_dim x dim per removed head (wqkv rows + wo columns), 3 x dim per channel."""
    removed = 0
    for lp, shape in zip(plan.layers, plan.dense_shapes):
        removed += (shape["num_heads"] - len(lp.heads)) * 4 * shape["head_dim"] * shape["hidden"]
        removed += (shape["intermediate"] - len(lp.channels)) * 3 * shape["hidden"]
    return plan.achieved["model_params_before"] - removed


def tiny_module(assets, **gen) -> LlamaGenModule:
    weights, real = assets
    gpt = build_gpt(GPTConfig(**GPT), seed=0).eval()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vq = VQModel(VQConfig(**VQ)).eval()
    return LlamaGenModule.from_models(
        gpt,
        vq,
        calibration=CalibrationSpec(images_per_class=2, classes=[1, 4, 7], batch_size=4, sampling={"cfg_scale": 1.5}),
        generation=GenerationSpec(**{"num_samples": 6, "classes": [2, 8], "batch_size": 4, "seed": 3, **gen}),
        metrics=MetricsSpec(reference=str(real), inception_weights=str(weights), isc_splits=2),
        eval_size=16,
        precision="fp32",
    )


def trainer(callbacks=()) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
    )


def test_callbacks_equal_prune_and_validation_equals_generate_images(assets):
    module = tiny_module(assets)
    dense = copy.deepcopy(module.model)
    out = trainer(pruning_callbacks(0.4, head_scaling="none")).validate(module, verbose=False)[0]

    rows, info = module.calibration()
    assert torch.equal(rows, calibration_tokens(dense, [1, 4, 7], per_class=2, batch_size=4, cfg_scale=1.5, seed=1))
    assert info["images_per_class"] == 2 and info["classes"] == 3 and info["dataset"] == "self-generated:2x3"
    plan = prune_(dense, ratio=0.4, calibration=rows, progress=False, head_scaling="none")
    assert module.plan.layers == plan.layers and module.plan_applied
    assert plan.achieved["heads_pruned"] > 0 and plan.achieved["channels_pruned"] > 0
    for (n, p), (_, q) in zip(module.model.named_parameters(), dense.named_parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=n)
    assert count_params(module.model) == module.plan.achieved["model_params_after"] == expected_params(module.plan)
    assert module.plan.calibration["dataset"] == "self-generated:2x3"

    # validation: the pruned model's images, batched and seeded as generate_images; metrics logged as val/*
    images = generate_images(dense, module.vq, [2, 2, 2, 8, 8, 8], batch_size=4, cfg_scale=1.75, seed=3, eval_size=16)
    module.metrics_spec.names = ["fid"]
    again = module.__class__.from_models(module.model, module.vq, generation=module.gen_spec, eval_size=16)
    again.metrics_spec, captured = module.metrics_spec, []
    again._save_samples = captured.append  # the images that were scored
    trainer().validate(again, verbose=False)
    assert np.array_equal(captured[0], images)
    assert set(out) >= {f"val/{m}" for m in METRICS} and out["val/num_generated"] == 6
    assert out["val/fid"] == pytest.approx(module.scores["fid"], rel=1e-6) and module.scores["fid"] > 0


def test_flap_on_llamagen(assets, tmp_path):
    """The paper's only LlamaGen baseline runs through the same config (its output biases included)."""
    results = tmp_path / "flap.csv"
    args = tiny_args(assets, results, methods="[flap]", ratios="[0.2]")
    assert main(args) == 0
    rows = read_rows(results)
    assert {r["method"] for r in rows} == {"flap"} and {r["metric"] for r in rows} >= set(METRICS)
    assert int(rows[0]["params_after"]) < int(rows[0]["params_before"])


def test_config_errors_are_one_line(assets, tmp_path, capsys):
    args = tiny_args(assets, tmp_path / "x.csv")
    assert main([*args, "--model.calibration.images=3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "numprune: error: config: model.calibration: Option 'images' is not accepted"
    assert main([*args, "--model.generation.num_samples=7"]) == 2  # not a multiple of the 10 classes
    err = capsys.readouterr().err
    assert "not a multiple" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()
