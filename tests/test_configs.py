"""Every experiment config runs (or dry-runs) on a tiny random model by override; grids resume after a crash."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from numprune.cli import main
from numprune.lit.cli import parse
from numprune.points import Grid, expand
from numprune.results import read_rows, row_key
from numprune.runner import Runner
from tests.lit_helpers import make_tiny_dir

CONFIGS = Path(__file__).parent.parent / "experiments" / "configs"
PPL = ["table1_5_llama1_ppl", "table6_llama2_ppl", "table7_llama3_ppl", "table4_10_seqlen128", "figure4_calib_samples"]
OTHER = ["table2_9_zeroshot", "table8_mmlu_gsm8k", "figure5_speed"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dir(tmp_path_factory.mktemp("cfg"))


def tiny_args(tiny, results, ratios="[0.0,0.3]", evals=True):
    path, text = tiny
    args = [
        f"--grid.models=[{path}]",
        f"--grid.ratios={ratios}",
        "--model.dtype=fp32",
        f"--data.calib={text}",
        "--data.nsamples=4",
        "--data.seqlen=32",
        "--data.max_windows=3",
        "--trainer.accelerator=cpu",
        f"--results={results}",
    ]
    return args + ([f"--data.evals=[{text}]"] if evals else [])


def test_every_paper_artefact_has_a_config_with_command_and_time():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert set(PPL + OTHER) | {"table3_llamagen"} <= names
    for p in CONFIGS.glob("*.yaml"):
        first = p.read_text().splitlines()[0]
        assert first.startswith(f"# numprune run experiments/configs/{p.name}"), p.name
        assert re.search(r"~\d+ (h|min)", first), f"{p.name}: the first line gives the expected time"


@pytest.mark.parametrize("name", PPL)
def test_ppl_config_runs_on_tiny_model(name, tiny, tmp_path, capsys):
    results = tmp_path / "r.csv"
    extra = [] if name == "table4_10_seqlen128" else ["--data.eval_seqlen=32"]
    if name == "figure4_calib_samples":
        variant = '{"numerical-no-compensation": {"method": "numerical", "compensation": "none", "nsamples": 4}}'
        extra += ["--grid.nsamples=[4,8]", f"--grid.variants={variant}"]
    ratios = "[0.3]" if name == "figure4_calib_samples" else "[0.0,0.3]"
    assert main(["run", str(CONFIGS / f"{name}.yaml"), *tiny_args(tiny, results, ratios), *extra]) == 0
    rows = read_rows(results)
    ppl = [r for r in rows if r["metric"] == "ppl"]
    assert ppl and all(float(r["value"]) > 1 for r in ppl)
    assert {r["experiment"] for r in rows} == {name}
    methods = Counter(r["method"] for r in ppl)
    if name == "figure4_calib_samples":  # 2 calibration sizes + the no-compensation variant pinned at 128
        assert methods == {"numerical": 2, "numerical-no-compensation": 1}
        assert {r["calib_nsamples"] for r in ppl} == {"4", "8"}
    else:
        assert methods == {"dense": 1, "numerical": 1}
    pruned = next(r for r in ppl if r["method"] == "numerical")
    assert abs(float(pruned["ratio_achieved"]) - 0.3) < 0.05 and int(pruned["params_after"]) < int(
        pruned["params_before"]
    )
    assert list((tmp_path / "r" / "plans").glob("*.json"))  # the plan is stored with the run


@pytest.mark.parametrize("name", [*OTHER, *PPL])
def test_config_dry_run(name, tiny, tmp_path, capsys):
    assert main(["run", str(CONFIGS / f"{name}.yaml"), "--dry_run=true", *tiny_args(tiny, tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "points" in out and "todo" in out
    assert main(["run", str(CONFIGS / f"{name}.yaml"), "--dry-run"]) == 0  # the unchanged config parses
    out = capsys.readouterr().out
    assert "done " not in out and ("model=huggyllama/" in out or name.startswith(("table6", "table7")))


def points_of(name: str) -> list[list]:
    """(label, ratio, model, calibration size) of every point of a config, as the runner expands it."""
    args = [f"--config={CONFIGS / name}.yaml"]
    cfg = parse(args)
    model = cfg.model.init_args.model
    data = cfg.get("data")
    base = {
        "model": model.as_dict() if hasattr(model, "as_dict") else model,
        "nsamples": data.init_args.nsamples if data is not None else None,
        "method": cfg.method,
        "ratio": cfg.ratio,
        "label": cfg.label,
        "prune": dict(cfg.prune),
    }
    out = []
    for p in expand(cfg.experiment, Grid(**vars(cfg.grid)), base, args):
        over = dict(a.removeprefix("--").split("=", 1) for a in p.args[1:])
        model = over.get("model.model", base["model"])
        name_ = json.loads(model)["name"] if model.startswith("{") else model
        n = over.get("data.nsamples")
        out.append([p.name, p.ratio, name_, None if n is None else int(n)])
    return out


BEFORE = json.loads((Path(__file__).parent / "data" / "config_points.json").read_text())


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_configs_list_the_same_points_as_before_the_runner_merge(name):
    """tests/data/config_points.json: the points every config had under the three former runners."""
    before = BEFORE[name]
    assert points_of(name) == before


def test_llamagen_config_dry_run(capsys):
    assert main(["run", str(CONFIGS / "table3_llamagen.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "14 points" in out and "flap ratio=0.2 model=LlamaGen-3B" in out
    # A real run checks everything before loading a model: here the checkpoints are absent (one clear line).
    assert main(["run", str(CONFIGS / "table3_llamagen.yaml")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint checkpoints/llamagen/c2i_XXL_384.pt does not exist" in err and len(err.splitlines()) == 1


def fake_zeroshot(model, tokenizer, tasks="paper", batch_size=1):
    return [{"task": "boolq", "metric": "acc", "value": 0.5}, {"task": "piqa", "metric": "acc", "value": 0.25}]


def test_evaluator_rows_and_resume(tiny, tmp_path):
    results = tmp_path / "z.csv"
    args = ["run", str(CONFIGS / "table2_9_zeroshot.yaml"), *tiny_args(tiny, results, evals=False)]
    fake = '--evaluate=[{"name": "zeroshot", "function": "tests.test_configs.fake_zeroshot"}]'
    assert main([*args, fake]) == 0
    rows = [r for r in read_rows(results) if r["metric"] == "acc"]
    assert sorted(r["eval_dataset"] for r in rows) == ["zeroshot:boolq"] * 2 + ["zeroshot:piqa"] * 2
    assert main([*args, fake]) == 0
    assert len([r for r in read_rows(results) if r["metric"] == "acc"]) == 4  # rerun: nothing added


def test_interrupted_grid_resumes_without_duplicates(tiny, tmp_path, monkeypatch):
    results = tmp_path / "g.csv"
    args = ["run", str(CONFIGS / "table1_5_llama1_ppl.yaml"), *tiny_args(tiny, results, "[0.0,0.2,0.4]")]
    args.append("--data.eval_seqlen=32")
    real, calls, crash = Runner.run_point, [], [True]

    def crash_on_second(self, p):
        calls.append(p)
        if crash[0] and len(calls) == 2:
            crash[0] = False
            raise KeyboardInterrupt  # a crash in the middle of the grid
        return real(self, p)

    monkeypatch.setattr(Runner, "run_point", crash_on_second)
    assert main(args) == 130
    assert {r["ratio"] for r in read_rows(results)} == {"0.0"}
    calls.clear()
    assert main(args) == 0
    assert [p.ratio for p in calls] == [0.2, 0.4]  # the finished dense point is not recomputed
    rows = read_rows(results)
    keys = [row_key(r) for r in rows]
    assert len(keys) == len(set(keys))
    ppl = sorted(float(r["ratio"]) for r in rows if r["metric"] == "ppl")
    assert ppl == [0.0, 0.2, 0.4]
    calls.clear()
    assert main(args) == 0 and calls == [] and len(read_rows(results)) == len(rows)


@pytest.mark.parametrize("name", PPL + OTHER)
def test_llama_paper_configs_set_the_paper_reading_explicitly(name):
    """Every LLaMA paper-table config prunes with numprune.methods.numerical.PAPER_READING, written out (so
    that no table depends on numprune's defaults of the day), and every point records it."""
    from numprune.methods import effective_options
    from numprune.methods.numerical import PAPER_READING

    cfg = parse([f"--config={CONFIGS / f'{name}.yaml'}"])
    assert dict(cfg.prune) == PAPER_READING
    opts = effective_options(0.2, "numerical", **dict(cfg.prune))
    assert {k: opts[k] for k in PAPER_READING} == PAPER_READING
