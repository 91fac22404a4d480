"""DDP calibration on CPU (gloo, two processes under torchrun): plan, pruned weights and perplexity equal the
single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from numprune import prune_
from numprune.eval.perplexity import perplexity
from numprune.hub import load_model
from numprune.lit import TextDataModule
from numprune.plan import PruningPlan
from numprune.pruned_model import load_pruned
from numprune.results import read_rows
from tests.lit_helpers import make_tiny_dir

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "experiments" / "configs" / "table1_5_llama1_ppl.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_single_process(tmp_path):
    path, text = make_tiny_dir(tmp_path, kv_heads=2)
    data = dict(calib=str(text), nsamples=7, seqlen=32, evals=[str(text)], eval_seqlen=32, max_windows=5, seed=4)
    results = tmp_path / "ddp.csv"
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"),
        *("-m", "numprune.cli", "run", str(CONFIG)),
        *(f"--grid.models=[{path}]", "--grid.ratios=[0.4]", "--model.dtype=fp32", f"--results={results}"),
        *(f"--data.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in data.items()),
        *("--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2", "--save_models=true"),
        '--prune={"head_scaling": "none"}',
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    ref = load_model(str(path))[0]
    dm = TextDataModule(str(path), **data)
    plan = prune_(ref, ratio=0.4, calibration=dm.calibration()[0], head_scaling="none", progress=False)
    (model_dir,) = (results.with_suffix("") / "models").iterdir()
    ddp_plan = PruningPlan.load(model_dir / "pruning_plan.json")
    assert ddp_plan.layers == plan.layers
    assert ddp_plan.calibration["nsamples"] == 7 and ddp_plan.calibration["processes"] == 2
    ddp = load_pruned(model_dir)
    for (n, p), (_, q) in zip(ddp.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)
    (row,) = [r for r in read_rows(results) if r["metric"] == "ppl"]
    expect = perplexity(ref, dm.eval_set(str(text))[0], progress=False)
    assert int(row["eval_windows"]) == 5 and float(row["value"]) == pytest.approx(expect["ppl"], rel=1e-5)
