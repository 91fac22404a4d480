"""The one experiment runner: resume and result rows, for text LLMs and LlamaGen alike.

Every ``numprune.points.Point`` is one LightningCLI instantiation (``numprune.lit.cli``: module, datamodule,
trainer with the pruning callbacks) and one ``trainer.validate``; the module says what its rows are
(``PrunableModule.run_context`` / ``planned_rows`` / ``measured_rows``) and ``numprune.results.run_rows`` turns
them into rows of the one schema. A point whose rows are all in the CSV is skipped, so an interrupted grid
resumes where it stopped and writes each row once. ``numprune run CONFIG.yaml`` is ``run_config``; the
experiment scripts call ``run_points``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from numprune.adapters import get_adapter
from numprune.adapters.base import per_token_costs
from numprune.errors import NumpruneError
from numprune.evaluators import Evaluator, evaluator_rows
from numprune.lit.callbacks import CompensationCallback, ScoringCallback, summary_line
from numprune.lit.cli import instantiate, parse
from numprune.methods import effective_options, get_method
from numprune.passes import dense_statistics
from numprune.points import Grid, Point, expand
from numprune.provenance import count_params
from numprune.results import append_rows, git_commit, has_rows, plan_columns, run_rows

log = logging.getLogger("numprune")
TIMING_METRICS = ("prune_seconds", "peak_rss_gib", "peak_device_gib")


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


def _common(module, context: dict[str, Any]) -> dict[str, Any]:
    """Columns every row of a finished run shares: parameter counts, what the plan achieved, provenance."""
    params = count_params(module.model)
    common = {"model_hash": context.get("model_hash", ""), "git_commit": git_commit()}
    if module.plan is None:
        adapter = get_adapter(module.model)
        geos = [adapter.geometry(layer) for layer in adapter.layers(module.model)]
        costs = per_token_costs(geos, next(module.model.parameters()).element_size())
        return {**common, "params_before": params, "params_after": params, "versions": {"torch": torch.__version__},
                **costs}  # fmt: skip
    achieved = ("calib_source", "ratio_achieved", "params_before", "heads_pruned", "kv_heads_pruned",
                "channels_pruned", "kv_bytes_per_token", "attn_flops_per_token", "versions")  # fmt: skip
    plan = plan_columns(module.plan)
    return {**common, **{k: plan[k] for k in achieved}, "params_after": params}


def _timing(p: Point, module) -> dict[str, float]:
    """Pruning time and peak memory; with a shared dense pass only the time, named for what it excludes."""
    if module.plan is None:
        return {}
    t = module.plan.timing
    if p.share_dense_stats and get_method(p.method).scoring == "dense":  # only dense scoring shares the pass
        return {"prune_seconds_excl_dense_pass": t["prune_seconds"]} if "prune_seconds" in t else {}
    return {m: t[m] for m in TIMING_METRICS if m in t}


class Runner:
    """Runs points one after the other and appends their rows; ``results=None`` prints them instead."""

    def __init__(self, results: str | Path | None, evaluators: Sequence[Evaluator] = (), save_models: bool = False):
        self.results, self.evaluators, self.save_models = results, list(evaluators), save_models
        self._dense_stats: dict[tuple, list] = {}
        self._classes: dict[tuple[str, ...], Any] = {}  # module and datamodule of a point, before its run
        git_commit()  # the code this process imported, recorded before any run (cached)

    def classes(self, p: Point):
        """The point's module and datamodule (no weights, no trainer), built once."""
        if p.args not in self._classes:
            self._classes[p.args] = instantiate(p.args, trainer=False)
        return self._classes[p.args]

    def output(self) -> Path | None:
        return Path(self.results).with_suffix("") if self.results else None

    def model_dir(self, p: Point) -> Path | None:
        """Where ``save_models`` saves the pruned model of ``p`` (None without a results file)."""
        out = self.output()
        return None if out is None else out / "models" / _stem(self.status(p)[1])

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
        names = [ev.name for ev in self.evaluators]
        return has_rows(self.results, base, run.module.planned_rows(run.datamodule), names), base

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
        pruning = (ScoringCallback(p.ratio, p.method, **p.options), CompensationCallback()) if p.ratio > 0 else None
        run = instantiate(p.args, pruning or [])
        module, dm, trainer = run.module, run.datamodule, run.trainer
        assert trainer is not None
        context = module.run_context(dm)
        base = base_row(p, context)
        out, stem = self.output(), _stem(base)
        module.set_output(out, stem)
        if pruning is not None:
            scoring, compensation = pruning
            compensation.plan_path = None if out is None else str(out / "plans" / f"{stem}.json")
            if p.share_dense_stats and get_method(p.method).scoring == "dense":
                scoring.dense_stats = self._shared_stats(module, dm, context)
        trainer.validate(module, datamodule=dm, verbose=False)
        if not trainer.is_global_zero:
            return []
        if module.plan is not None:
            log.warning("numprune run: %s", summary_line(module.plan))
            if self.save_models and out is not None:
                module.save_pruned_model(out / "models" / stem, dm)
        tokenizer = getattr(dm, "tokenizer", None)
        extra = [r for ev in self.evaluators for r in evaluator_rows(ev, module.model, tokenizer)]
        rows = run_rows(base, _common(module, context), module.measured_rows(dm), extra, _timing(p, module))
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
