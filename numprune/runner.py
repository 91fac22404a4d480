"""The one experiment runner: grid points, resume, result rows, for text LLMs and LlamaGen alike.

A ``Point`` is one run: a method at a ratio (ratio 0: the dense model) on a model and data given by LightningCLI
arguments (``args``: a config file and overrides). ``numprune run CONFIG.yaml`` expands a config's ``grid`` into
points; the experiment scripts build points with ``text_point``. Every point is one LightningCLI instantiation
(``numprune.lit.cli``: module, datamodule, trainer with the pruning callbacks) and one ``trainer.validate``; the
module says what its rows are (``PrunableModule.run_context`` / ``planned_rows`` / ``measured_rows``), and
``point_rows`` turns them into rows of the one schema (``numprune.results``). A point whose rows are all in the
CSV is skipped, so an interrupted grid resumes where it stopped and writes each row once.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from numprune.config import effective_options
from numprune.errors import NumpruneError
from numprune.evaluators import Evaluator, evaluator_rows
from numprune.lit.callbacks import pruning_callbacks, summary_line
from numprune.lit.cli import Grid, instantiate, parse
from numprune.passes import dense_statistics
from numprune.prune import count_params
from numprune.results import append_rows, git_commit, read_rows, row_key

log = logging.getLogger("numprune")
TIMING_METRICS = ("prune_seconds", "peak_rss_gib", "peak_device_gib")


@dataclass(frozen=True)
class Point:
    """One run of an experiment grid."""

    experiment: str
    method: str = "dense"  # a registered method, or "dense" (ratio 0)
    ratio: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # PruneConfig fields as given (rows record all)
    label: str | None = None  # the CSV's method column (default: the method)
    args: tuple[str, ...] = ()  # LightningCLI arguments that build the model and the data
    # Reuse one dense calibration pass across the points of a process (same model and calibration): the pruned
    # model is identical; the time row is then ``prune_seconds_excl_dense_pass`` and no memory row is written.
    share_dense_stats: bool = False

    @property
    def name(self) -> str:
        return self.label or self.method

    def describe(self) -> str:
        """``LABEL ratio=R`` and what selects this point's model and calibration size."""
        parts = [f"{self.name} ratio={self.ratio:g}"]
        for arg in self.args:
            key, _, value = arg.partition("=")
            if key in ("--model.model", "--data.nsamples"):
                name = json.loads(value).get("name", value) if value.startswith("{") else value
                parts.append(f"{key.removeprefix('--').split('.')[-1]}={name}")
        return " ".join(parts)


def text_point(
    experiment: str,
    model: str = "smollm2",
    method: str = "numerical",
    ratio: float = 0.2,
    options: dict[str, Any] | None = None,
    calib: str = "wikitext2:validation",
    nsamples: int = 32,
    seqlen: int = 256,
    seed: int = 0,
    evals: Sequence[str] = ("wikitext2",),
    eval_seqlen: int = 256,
    max_windows: int | None = 16,
    label: str | None = None,
    share_stats: bool = False,
    data_dir: str | None = None,
    dtype: str = "fp32",
) -> Point:
    """A point of the SmolLM2 experiment scripts' protocol (32 x 256 calibration windows of WikiText-2
    validation, the first 16 non-overlapping 256-token windows of each evaluation set, fp32 on the CPU)."""
    args = [
        f"--model.model={model}",
        f"--model.dtype={dtype}",
        f"--data.calib={calib}",
        f"--data.nsamples={nsamples}",
        f"--data.seqlen={seqlen}",
        f"--data.seed={seed}",
        f"--data.evals={json.dumps(list(evals))}",
        f"--data.eval_seqlen={eval_seqlen}",
        f"--data.max_windows={'null' if max_windows is None else max_windows}",
        "--trainer.accelerator=cpu",
    ]
    if data_dir:
        args.append(f"--data.data_dir={data_dir}")
    dense = ratio == 0
    return Point(
        experiment,
        method="dense" if dense else method,
        ratio=float(ratio),
        options={} if dense else dict(options or {}),
        label="dense" if dense else label,
        args=tuple(args),
        share_dense_stats=share_stats and not dense,
    )


def expand(experiment: str, grid: Grid, base: dict[str, Any], args: Sequence[str]) -> list[Point]:
    """Every point of a grid, in order, without duplicates (one dense point per model and calibration size).

    ``base``: the config's single values (``model``: ``model.model``; ``nsamples``: ``data.nsamples`` or None
    without a text datamodule; ``method``, ``ratio``, ``label``, ``prune``).
    """
    points: list[Point] = []
    for m in grid.models or [base["model"]]:
        model_arg = [f"--model.model={m if isinstance(m, str) else json.dumps(m)}"] if grid.models else []
        for n in grid.nsamples or [base["nsamples"]]:
            for label in grid.methods or [base["method"]]:
                variant = dict(grid.variants.get(label, {"method": label}))
                method = variant.pop("method", label)
                n_here = variant.pop("nsamples", n)
                for r in grid.ratios or [base["ratio"]]:
                    dense = r == 0
                    size = [] if (n if dense else n_here) is None else [f"--data.nsamples={n if dense else n_here}"]
                    p = Point(
                        experiment,
                        method="dense" if dense else method,
                        ratio=float(r),
                        options={} if dense else {**base["prune"], **variant},
                        label="dense" if dense else (base["label"] if not grid.methods and base["label"] else label),
                        args=(*args, *model_arg, *size),
                        share_dense_stats=grid.share_dense_stats and not dense,
                    )
                    if p not in points:
                        points.append(p)
    return points


def base_row(p: Point, context: dict[str, Any]) -> dict[str, Any]:
    """The key columns of a point's rows that do not depend on the measurement."""
    pruned = p.ratio > 0
    opts = effective_options(p.ratio, p.method, **p.options) if pruned else {}
    return {
        "experiment": p.experiment,
        "model": context["model"],
        "method": p.name,
        "ratio": p.ratio,
        "ratio_of": opts.get("ratio_of", "params"),
        "seed": context.get("seed", 0),
        "calib_dataset": context.get("calib_dataset", "") if pruned else "",
        "calib_nsamples": context.get("calib_nsamples", "") if pruned else "",
        "calib_seqlen": context.get("calib_seqlen", "") if pruned else "",
        "options": json.dumps(opts, sort_keys=True),
    }


def is_done(results: str | Path | None, base: dict[str, Any], planned: list[dict], evaluators: list[Evaluator]) -> bool:
    """Whether every planned row of a point is in the CSV (and at least one row of each evaluator)."""
    if not results or not Path(results).exists() or not (planned or evaluators):
        return False
    rows = read_rows(results)
    keys = {row_key(r) for r in rows}
    if any(row_key({**base, **row}) not in keys for row in planned):
        return False
    same = [r for r in rows if all(r.get(k, "") == str(v) for k, v in base.items() if k not in ("ratio", "options"))]
    same = [r for r in same if float(r["ratio"] or 0) == base["ratio"]]
    return all(any(r["eval_dataset"].startswith(f"{ev.name}:") for r in same) for ev in evaluators)


def point_rows(p: Point, module, base: dict[str, Any], context: dict, measured: list[dict], extra: list[dict]):
    """The result rows of one finished run: one per measurement and per evaluator result, plus the pruning
    cost (time, peak memory) of pruned points."""
    plan = module.plan
    common: dict[str, Any] = {
        "model_hash": context.get("model_hash", ""),
        "params_after": count_params(module.model),
        "params_before": plan.achieved["model_params_before"] if plan else count_params(module.model),
        "versions": plan.versions if plan else {"torch": torch.__version__},
        "git_commit": git_commit(),
    }
    if plan is not None:
        a = plan.achieved
        common.update(
            calib_source=plan.calibration.get("source", ""),
            ratio_achieved=round(a["params_ratio"], 6),
            heads_pruned=a.get("heads_pruned", ""),
            kv_heads_pruned=a.get("kv_heads_pruned", ""),
            channels_pruned=a.get("channels_pruned", ""),
        )
    row = {**base, **common}
    rows = [{**row, **m} for m in measured]
    opts = json.loads(base["options"])
    for r in extra:
        details = r.pop("details", {})
        rows.append({**row, **r, "options": json.dumps({**opts, **details}, sort_keys=True)})
    if plan is not None:
        for metric in TIMING_METRICS:
            if metric not in plan.timing or (p.share_dense_stats and metric != "prune_seconds"):
                continue  # with a shared dense pass, the memory peak is not this point's
            name = f"{metric}_excl_dense_pass" if p.share_dense_stats else metric
            rows.append({**row, "metric": name, "value": plan.timing[metric]})
    return rows


class Runner:
    """Runs points one after the other and appends their rows; ``results=None`` prints them instead."""

    def __init__(self, results: str | Path | None, evaluators: Sequence[Evaluator] = (), save_models: bool = False):
        self.results, self.evaluators, self.save_models = results, list(evaluators), save_models
        self._dense_stats: dict[tuple, list] = {}
        self._classes: dict[tuple[str, ...], Any] = {}  # module and datamodule of a point, before its run

    def classes(self, p: Point):
        """The point's module and datamodule (no weights, no trainer), built once."""
        if p.args not in self._classes:
            self._classes[p.args] = instantiate(p.args, trainer=False)
        return self._classes[p.args]

    def output(self) -> Path | None:
        return Path(self.results).with_suffix("") if self.results else None

    def preflight(self, points: Sequence[Point]) -> list[str]:
        """Problems of every point (missing files, ...) before any model is loaded."""
        problems: list[str] = []
        for p in points:
            run = self.classes(p)
            problems += [q for q in run.module.preflight(run.datamodule) if q not in problems]
        return problems

    def status(self, p: Point) -> tuple[bool, dict[str, Any]]:
        run = self.classes(p)
        context = run.module.run_context(run.datamodule)
        base = base_row(p, context)
        return is_done(self.results, base, run.module.planned_rows(run.datamodule), self.evaluators), base

    def run(self, points: Sequence[Point]) -> list[dict[str, Any]]:
        problems = self.preflight(points)
        if problems:  # before any model is loaded, not after hours of the first points
            raise NumpruneError(f"the grid cannot start: {'; '.join(problems)} (--dry_run=true lists it)")
        written: list[dict[str, Any]] = []
        for p in points:
            done, _ = self.status(p)
            if done:
                log.info("numprune run: %s already in %s, skipped", p.describe(), self.results)
                continue
            written += self.run_point(p)
        return written

    def run_point(self, p: Point) -> list[dict[str, Any]]:
        """One Lightning run: calibrate, prune (ratio > 0), evaluate; the rows appended to the CSV."""
        callbacks = pruning_callbacks(p.ratio, p.method, **p.options) if p.ratio > 0 else []
        run = instantiate(p.args, callbacks)
        module, dm, trainer = run.module, run.datamodule, run.trainer
        context = module.run_context(dm)
        base = base_row(p, context)
        out, stem = self.output(), _stem(base)
        module.set_output(out, stem)
        if callbacks:
            callbacks[1].plan_path = None if out is None else str(out / "plans" / f"{stem}.json")
            if p.share_dense_stats:
                callbacks[0].dense_stats = self._shared_stats(module, dm, context)
        trainer.validate(module, datamodule=dm, verbose=False)
        if not trainer.is_global_zero:
            return []
        if module.plan is not None:
            log.warning("numprune run: %s", summary_line(module.plan))
            if self.save_models and out is not None:
                module.save_pruned_model(out / "models" / stem, dm)
        tokenizer = getattr(dm, "tokenizer", None)
        extra = [r for ev in self.evaluators for r in evaluator_rows(ev, module.model, tokenizer)]
        rows = point_rows(p, module, base, context, module.measured_rows(dm), extra)
        if self.results:
            append_rows(self.results, rows)
        else:
            print(json.dumps(rows, default=str))
        del run, module, trainer
        gc.collect()
        return rows

    def _shared_stats(self, module, dm, context: dict[str, Any]) -> list:
        """The dense statistics of this model and calibration, computed once per process."""
        module.configure_model()
        calib, _ = module.calibration(dm)
        key = (context["model"], context.get("model_hash"), tuple(calib.shape), hash(calib.numpy().tobytes()))
        if key not in self._dense_stats:
            self._dense_stats.clear()
            self._dense_stats[key] = dense_statistics(module.model, calib)
        return self._dense_stats[key]


def _stem(base: dict[str, Any]) -> str:
    """A file name for a point's plan and saved model."""
    parts = [Path(str(base["model"])).name, base["method"], f"{base['ratio']:g}"]
    if base["calib_dataset"]:
        parts += [str(base["calib_dataset"]).replace(":", "-").replace("/", "-"), f"n{base['calib_nsamples']}"]
    return "-".join(parts)


def run_points(points: Sequence[Point], results: str | Path, echo: Callable[[str], None] = print) -> list[dict]:
    """Run the points of an experiment script, printing one line per new row (what, ratio, value, achieved)."""
    rows = Runner(results).run(points)
    for row in rows:
        value = row["value"]
        echo(f"{row['method']} {row['ratio']} {row['metric']} {row.get('eval_dataset', '')} "
             f"{value:.4g} {row.get('ratio_achieved', '')}")  # fmt: skip
    return rows


def dry_run(runner: Runner, points: Sequence[Point]) -> None:
    """Print every point (done / todo) and what a real run would lack."""
    for problem in runner.preflight(points):
        print(f"note: {problem}")
    for ev in runner.evaluators:
        print(f"evaluator {ev.name}: {ev.function} ({ev.status()})")
    for p in points:
        done, _ = runner.status(p)
        print(f"{'done' if done else 'todo'}  {p.describe()}")
    print(f"{len(points)} points, results {runner.results}")


def run_config(config: str, overrides: Sequence[str], list_only: bool = False) -> list[dict[str, Any]]:
    """Run (or, with ``--dry_run=true`` / ``list_only``, list) every point of a config; returns the rows written."""
    args = [f"--config={config}", *overrides]
    cfg = parse(args)
    model_value = cfg.model.init_args.model
    data = cfg.get("data")
    base = {
        "model": model_value.as_dict() if hasattr(model_value, "as_dict") else model_value,
        "nsamples": data.init_args.nsamples if data is not None and "nsamples" in data.init_args else None,
        "method": cfg.method,
        "ratio": cfg.ratio,
        "label": cfg.label,
        "prune": dict(cfg.prune),
    }
    points = expand(cfg.experiment, Grid(**vars(cfg.grid)), base, args)
    evaluators = [e if isinstance(e, Evaluator) else Evaluator(**vars(e)) for e in cfg.evaluate]
    runner = Runner(cfg.results, evaluators, cfg.save_models)
    if cfg.dry_run or list_only:
        dry_run(runner, points)
        return []
    if "ddp" in str(cfg.trainer.strategy) and "LOCAL_RANK" not in os.environ and len(points) > 1:
        # Lightning's own launcher re-runs the command per Trainer; a grid makes one Trainer per point.
        raise NumpruneError(
            "a multi-process grid runs under torchrun: torchrun --nproc_per_node=N -m numprune.cli run "
            f"{config} --trainer.strategy=ddp --trainer.devices=N ... (docs/distributed.md)"
        )
    return runner.run(points)
