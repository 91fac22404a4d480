"""The zero-shot and speed configs run end to end with the real evaluators on a tiny model (by override)."""

from __future__ import annotations

import json

import pytest

from numprune.cli import main
from numprune.results import read_rows
from tests.lit_helpers import make_tiny_dir
from tests.test_configs import CONFIGS, tiny_args
from tests.test_zeroshot import task_dir  # noqa: F401  (fixture: local task files in the tasks' formats)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dir(tmp_path_factory.mktemp("cfg-eval"))


def test_zeroshot_config_with_lm_eval(tiny, task_dir, tmp_path):  # noqa: F811
    results = tmp_path / "z.csv"
    ev = [
        {
            "name": "zeroshot",
            "function": "numprune.eval.zeroshot.evaluate_zeroshot",
            "args": {"tasks": "boolq,piqa", "data_dir": str(task_dir)},
        }
    ]
    args = ["run", str(CONFIGS / "table2_9_zeroshot.yaml"), *tiny_args(tiny, results, evals=False)]
    assert main([*args, f"--evaluate={json.dumps(ev)}"]) == 0
    rows = read_rows(results)
    acc = {(r["ratio"], r["eval_dataset"]): float(r["value"]) for r in rows if r["metric"] == "acc"}
    # two ratios x two tasks, accuracies are fractions of the 5 BoolQ / 4 PIQA documents
    assert sorted(acc) == [(ratio, f"zeroshot:{t}") for ratio in ("0.0", "0.3") for t in ("boolq", "piqa")]
    # the dense rows are exactly what the evaluator gives the dense model; the pruned ones count the same documents
    from numprune.eval.zeroshot import evaluate_zeroshot
    from numprune.hub import load_model

    model, tok = load_model(str(tiny[0]))
    direct = {s.task: s.value for s in evaluate_zeroshot(model, tok, "boolq,piqa", data_dir=str(task_dir))}
    assert {t: acc[("0.0", f"zeroshot:{t}")] for t in ("boolq", "piqa")} == pytest.approx(direct, abs=1e-12)
    windows = {(r["ratio"], r["eval_dataset"]): r["eval_windows"] for r in rows if r["metric"] == "acc"}
    assert {w for (ratio, ev), w in windows.items() if ev.endswith("boolq")} == {"5"}


def test_speed_config_on_cpu(tiny, tmp_path):
    results = tmp_path / "s.csv"
    ev = [
        {
            "name": "speed",
            "function": "numprune.eval.speed.measure",
            "args": {"batch": 1, "prompt_len": 8, "new_tokens": 4, "reps": 1},
        }
    ]
    args = ["run", str(CONFIGS / "figure5_speed.yaml"), *tiny_args(tiny, results, evals=False)]
    assert main([*args, f"--evaluate={json.dumps(ev)}"]) == 0
    rows = read_rows(results)
    by = {(r["ratio"], r["metric"]): float(r["value"]) for r in rows if r["eval_dataset"] == "speed:speed"}
    assert {m for _, m in by} >= {"decode_tokens_per_s", "bytes_per_token", "weights_gib"}
    # the pruned model reads fewer bytes per decode step and holds fewer weights than the dense one
    assert by[("0.3", "bytes_per_token")] < by[("0.0", "bytes_per_token")]
    assert by[("0.3", "weights_gib")] < by[("0.0", "weights_gib")]
    assert all(by[(r, "decode_tokens_per_s")] > 0 for r in ("0.0", "0.3"))


def test_mmlu_gsm8k_config_with_lm_eval(tiny, task_dir, tmp_path):  # noqa: F811
    """MMLU through the config (GSM8K generates 256 tokens, beyond the tiny model's 128 positions; its scoring
    is covered by tests/test_zeroshot.py)."""
    results = tmp_path / "m.csv"
    args = ["run", str(CONFIGS / "table8_mmlu_gsm8k.yaml"), *tiny_args(tiny, results, ratios="[0.3]", evals=False)]
    ev = [
        {
            "name": "mmlu_gsm8k",
            "function": "numprune.eval.zeroshot.evaluate_zeroshot",
            "args": {"tasks": ["mmlu"], "num_fewshot": {"mmlu": 5}, "data_dir": str(task_dir)},
        }
    ]
    assert main([*args, f"--evaluate={json.dumps(ev)}"]) == 0
    rows = {r["eval_dataset"]: r for r in read_rows(results) if r["eval_dataset"].startswith("mmlu_gsm8k:")}
    assert set(rows) == {"mmlu_gsm8k:mmlu"} and rows["mmlu_gsm8k:mmlu"]["metric"] == "acc"
    assert all(json.loads(r["options"]).get("num_fewshot") == 5 for r in rows.values())  # shots recorded
