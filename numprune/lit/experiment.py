"""Experiment grids for ``numprune run``: points, result rows, resume, extra evaluators.

A config's ``grid`` expands into points (model x calibration size x method variant x ratio); ratio 0 is the
dense row. Each point is one Lightning run (``trainer.validate`` with the pruning callbacks) whose rows go to
the results CSV in the one schema (``numprune.results``); a point whose rows are all present is skipped, so an
interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from numprune.errors import NumpruneError
from numprune.grid import Point
from numprune.grid import _base_row as base_row  # the same row key as numprune.grid.run_point
from numprune.lit.data import DEFAULT_EVALS
from numprune.results import read_rows, row_key


@dataclass
class Grid:
    """What a config varies. Empty lists mean the single value of ``model.model``, ``data.nsamples``,
    ``method`` and ``ratio``. ``methods`` names methods or keys of ``variants``; a variant is
    ``{method: NAME, nsamples: N (optional, pins the calibration size), **PruneConfig fields}``."""

    models: list[str] = field(default_factory=list)
    nsamples: list[int] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Evaluator:
    """An evaluation beyond perplexity: ``function(model, [tokenizer,] **args)`` by dotted path. Its result
    (a list of dataclasses/dicts, or one) becomes rows with ``eval_dataset = NAME:TASK``."""

    name: str
    function: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPoint:
    model: str
    label: str  # the CSV's method column
    method: str
    ratio: float
    nsamples: int
    options: dict[str, Any]

    def overrides(self) -> list[str]:
        """The LightningCLI arguments that select this point."""
        return [
            f"--model.model={self.model}",
            f"--method={self.method}",
            f"--ratio={self.ratio}",
            f"--label={self.label}",
            f"--data.nsamples={self.nsamples}",
            f"--prune={json.dumps(self.options)}",
        ]


def expand(grid: Grid, model: str, method: str, ratio: float, nsamples: int, prune: dict) -> list[RunPoint]:
    """Every point of the grid, in order, without duplicates (one dense point per model)."""
    points: list[RunPoint] = []
    for m in grid.models or [model]:
        for n in grid.nsamples or [nsamples]:
            for label in grid.methods or [method]:
                variant = dict(grid.variants.get(label, {"method": label}))
                meth = variant.pop("method", label)
                n_here = int(variant.pop("nsamples", n))
                for r in grid.ratios or [ratio]:
                    p = (
                        RunPoint(m, "dense", "dense", 0.0, nsamples, {})
                        if r == 0
                        else RunPoint(m, label, meth, float(r), n_here, {**prune, **variant})
                    )
                    if p not in points:
                        points.append(p)
    return points


def to_point(experiment: str, p: RunPoint, data: dict[str, Any]) -> Point:
    """The ``numprune.grid.Point`` of a run (for its row key)."""
    return Point(
        experiment=experiment,
        model=p.model,
        method=p.method,
        ratio=p.ratio,
        options=p.options,
        calib=data["calib"],
        nsamples=p.nsamples,
        seqlen=data["seqlen"],
        seed=data["seed"],
        evals=tuple(DEFAULT_EVALS if data["evals"] is None else data["evals"]),
        eval_seqlen=data["eval_seqlen"],
        max_windows=data["max_windows"],
        label=p.label,
    )


def is_done(results: str | Path | None, point: Point, evaluators: list[Evaluator]) -> bool:
    """Whether every row of the point is in the CSV (perplexity per set; at least one row per evaluator)."""
    if not results or not Path(results).exists() or not (point.evals or evaluators):
        return False
    rows = read_rows(results)
    base = base_row(point)
    keys = {row_key(r) for r in rows}
    for e in point.evals:
        if row_key({**base, "eval_dataset": e, "eval_seqlen": point.eval_seqlen, "metric": "ppl"}) not in keys:
            return False
    same = [r for r in rows if all(r.get(k, "") == str(v) for k, v in base.items() if k not in ("ratio", "seed"))]
    same = [r for r in same if float(r["ratio"] or 0) == point.ratio and str(r["seed"]) == str(point.seed)]
    return all(any(r["eval_dataset"].startswith(f"{ev.name}:") for r in same) for ev in evaluators)


def resolve_function(path: str):
    """Import ``package.module.function``; a clear error when the evaluator is not available in this checkout."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise NumpruneError(f"evaluator {path} is not available ({err}); is its branch merged?") from None


_ROW_KEYS = {"task", "name", "metric", "value", "source", "metrics", "stderr"}


def run_evaluator(ev: Evaluator, model, tokenizer) -> list[dict[str, Any]]:
    """Call an evaluator and turn its result into ``eval_dataset``/``metric``/``value`` row parts."""
    fn = resolve_function(ev.function)
    kwargs = dict(ev.args)
    if "tokenizer" in inspect.signature(fn).parameters:
        kwargs["tokenizer"] = tokenizer
    out = fn(model, **kwargs)
    items = out if isinstance(out, (list, tuple)) else [out]
    rows = []
    for item in items:
        d = dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item)
        if "value" in d:
            task = d.get("task") or d.get("name") or ev.name
            # how the number was made (shots, task version, documents, filter): into the row's options
            details = {k: v for k, v in d.items() if k not in _ROW_KEYS and isinstance(v, (int, float, str))}
            rows.append(
                {
                    "eval_dataset": f"{ev.name}:{task}",
                    "metric": d.get("metric", "value"),
                    "value": d["value"],
                    "eval_source": d.get("source", ""),
                    "details": details,
                }
            )
            continue
        for key, value in d.items():  # a record of measurements (e.g. speed): one row per number
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"eval_dataset": f"{ev.name}:{ev.name}", "metric": key, "value": value})
    return rows


def result_rows(point: Point, module, metrics: dict[str, Any], data, extra: list[dict[str, Any]]) -> list[dict]:
    """Result rows of one finished run: perplexity per evaluation set, evaluator rows, pruning time/memory."""
    from numprune.hub import resolve
    from numprune.prune import count_params
    from numprune.results import file_hash, git_commit

    plan = module.plan
    common: dict[str, Any] = {
        "model_hash": file_hash(resolve(point.model)) if Path(point.model).exists() else "",
        "params_after": count_params(module.model),
        "params_before": plan.achieved["model_params_before"] if plan else count_params(module.model),
        "versions": plan.versions if plan else {},
        "git_commit": git_commit(),
    }
    if plan is not None:
        common.update(
            calib_source=plan.calibration.get("source", ""),
            ratio_achieved=round(plan.achieved["params_ratio"], 6),
            heads_pruned=plan.achieved["heads_pruned"],
            kv_heads_pruned=plan.achieved["kv_heads_pruned"],
            channels_pruned=plan.achieved["channels_pruned"],
        )
    base = {**base_row(point), **common}
    rows = []
    for name in point.evals:
        _, source = data.eval_set(name)
        rows.append(
            {
                **base,
                "eval_dataset": name,
                "eval_seqlen": point.eval_seqlen,
                "eval_source": source,
                "eval_windows": int(metrics[f"val/windows/{name}"]),
                "metric": "ppl",
                "value": float(metrics[f"val/ppl/{name}"]),
            }
        )
    for r in extra:
        r = dict(r)
        details = r.pop("details", {})
        opts = json.loads(base["options"]) if isinstance(base["options"], str) else dict(base["options"])
        rows.append({**base, **r, "options": json.dumps({**opts, **details}, sort_keys=True)})
    if plan is not None:
        for metric in ("prune_seconds", "peak_rss_gib", "peak_device_gib"):
            if metric in plan.timing:
                rows.append({**base, "metric": metric, "value": plan.timing[metric]})
    return rows
