"""The cost benchmark's plumbing and growth fits (no timing is asserted: timings belong to the benchmark)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from numprune.results import read_rows

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_worker_rows_carry_stages_ratios_and_what_was_built():
    bench = _load("bench_cost")
    spec = {"model": "tiny", "layers": 1, "nsamples": 2, "seqlen": 16, "dtype": "fp32", "device": "cpu",
            "threads": 1, "ratio": 0.3, "compensations": ["sequential"]}  # fmt: skip
    res = bench.worker(spec)
    assert res["layers_built"] == 1 and res["layers_full"] == 2 and res["weights"] == "random"
    rows = bench.rows_for(spec, res, "after", "abc")
    by = {r["metric"]: r for r in rows}
    for m in ("prune_seconds", "dense_pass_seconds", "forward_seconds", "prune_over_dense_pass", "peak_rss_gib",
              "stage_gram_seconds", "stage_sequential_forward_over_dense_pass", "save_wall_seconds"):  # fmt: skip
        assert m in by, m
    assert by["prune_over_dense_pass"]["value"] == pytest.approx(
        by["prune_seconds"]["value"] / by["dense_pass_seconds"]["value"]
    )
    opts = by["prune_seconds"]["options"]
    assert opts["weights"] == "random" and opts["layers_built"] == 1 and opts["code"] == "after"
    assert opts["compensation"] == "sequential"


def test_fits_recover_the_constants_of_synthetic_rows():
    report = _load("report_cost")
    rows = []
    for model, layers, n, s in (("llama-7b", 1, 8, 256), ("llama-3.2-1b", 2, 8, 512), ("smollm2", 4, 32, 256)):
        r = {"model": model, "layers_built": layers, "calib_nsamples": n, "calib_seqlen": s, "code": "after"}
        r["stage_gram_seconds"] = 3e-10 * layers * n * s * report.work(model, "gram", 1)
        r["stage_score_seconds"] = 2e-9 * layers * report.work(model, "score", n * s)
        rows.append(r)
    c = report.fits(pd.DataFrame(rows))
    assert c["gram"] == pytest.approx(3e-10) and c["score"] == pytest.approx(2e-9)
    h, i = report.GEOMETRY["llama-2-70b"][:2]
    c = {"forward": 1e-9, "gram": 3e-10, "score": 2e-9}
    ext = report.extrapolate(c, "llama-2-70b", 128, 2048, "dense", cache_gib=1e4)  # statistics cached
    assert ext["gram"] == pytest.approx(3e-10 * 80 * 128 * 2048 * (h * h + i * i))
    assert ext["total"] == pytest.approx(ext["forward"] + ext["gram"] + ext["score"])
    again = report.extrapolate(c, "llama-2-70b", 128, 2048, "dense")  # 569 GB of Gram matrices: a second pass
    assert again["gram"] == pytest.approx(2 * ext["gram"]) and again["forward"] == pytest.approx(2 * ext["forward"])


@pytest.mark.slow
def test_gpu_check_tiny_cpu_path_writes_everything(tmp_path):
    """``experiments/gpu_check.sh --device cpu --tiny``: every file under the one folder (~2 min on a loaded box)."""
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                           "--out", str(out)], capture_output=True, text=True, env={"PYTHON": sys.executable,
                           "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    for name in ("env.txt", "cost.csv", "cost.md", "cost.png", "speed_tiny.csv", "speed.md", "log.txt"):
        assert (out / name).exists(), name
    cost = read_rows(out / "cost.csv")
    comps = {json.loads(r["options"])["compensation"] for r in cost}
    assert comps == {"sequential", "dense"}
    assert {json.loads(r["options"])["head_scaling"] for r in cost} == {"alpha"}  # the default --head-scaling
    speed = {r["metric"] for r in read_rows(out / "speed_tiny.csv")}
    assert {"decode_tokens_per_s", "limit_speedup", "speedup_over_limit"} <= speed
    assert not (out / "models").exists()
