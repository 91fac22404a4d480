"""Prune-and-evaluate runs that write result rows, resumable: rows already in the CSV are not recomputed.

Every experiment script (quality benchmark, ablations, paper tables) goes through ``run_point``, which calls
the one ``prune_`` pipeline and the one ``perplexity`` function.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from numprune.data import calibration_windows, eval_windows, load_corpus
from numprune.eval.perplexity import perplexity
from numprune.hub import load_model
from numprune.plan import PruningPlan
from numprune.prune import count_params, dense_statistics, prune_
from numprune.results import append_rows, file_hash, git_commit, has_row


@dataclass(frozen=True)
class Point:
    """One cell of an experiment grid."""

    experiment: str
    model: str = "smollm2"
    method: str = "numerical"
    ratio: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)  # PruneConfig fields
    calib: str = "wikitext2:validation"
    nsamples: int = 32
    seqlen: int = 256
    seed: int = 0
    evals: tuple[str, ...] = ("wikitext2",)
    eval_seqlen: int = 256
    max_windows: int | None = 16
    label: str | None = None  # method label in the CSV (default: method name), e.g. "numerical-no-comp"
    # Reuse one dense calibration pass across the points of a process (same model and calibration). The
    # pruned model is identical; the time row is then "prune_seconds_excl_dense_pass" and no memory row is
    # written (only points that run the whole pipeline, share_stats=False, measure it).
    share_stats: bool = False


@functools.lru_cache(maxsize=2)
def _dense(model: str, dtype: torch.dtype = torch.float32):
    return load_model(model, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _calib(model: str, spec: str, nsamples: int, seqlen: int, seed: int, data_dir: str | None):
    corpus = load_corpus(spec, data_dir, default_split="train")
    tok = _dense(model)[1]
    return calibration_windows(corpus, tok, nsamples, seqlen, seed), corpus.source


@functools.lru_cache(maxsize=8)
def _eval(model: str, spec: str, seqlen: int, max_windows: int | None, data_dir: str | None):
    corpus = load_corpus(spec, data_dir)
    return eval_windows(corpus, _dense(model)[1], seqlen, max_windows), corpus.source


@functools.lru_cache(maxsize=1)
def _dense_stats(model: str, spec: str, nsamples: int, seqlen: int, seed: int, data_dir: str | None, device):
    return dense_statistics(_dense(model)[0], _calib(model, spec, nsamples, seqlen, seed, data_dir)[0], device)


def _base_row(p: Point) -> dict[str, Any]:
    return {
        "experiment": p.experiment,
        "model": p.model,
        "method": p.label or p.method,
        "ratio": p.ratio,
        "ratio_of": p.options.get("ratio_of", "params"),
        "seed": p.seed,
        "calib_dataset": p.calib if p.ratio > 0 else "",
        "calib_nsamples": p.nsamples if p.ratio > 0 else "",
        "calib_seqlen": p.seqlen if p.ratio > 0 else "",
        "options": json.dumps(p.options, sort_keys=True),
    }


def run_point(
    p: Point, results: str | Path, data_dir: str | None = None, device: str | None = None, progress: bool = False
) -> list[dict[str, Any]]:
    """Prune (unless ratio 0: the dense row) and evaluate; append rows to ``results``; skip what is there."""
    eval_rows = [{**_base_row(p), "eval_dataset": e, "eval_seqlen": p.eval_seqlen, "metric": "ppl"} for e in p.evals]
    if eval_rows and all(has_row(results, r) for r in eval_rows):
        return []
    dense, _ = _dense(p.model)
    model = copy.deepcopy(dense)
    plan: PruningPlan | None = None
    extra: dict[str, Any] = {}
    if p.ratio > 0:
        calib, source = _calib(p.model, p.calib, p.nsamples, p.seqlen, p.seed, data_dir)
        info = {"dataset": p.calib, "source": source, "seed": p.seed}
        shared = (
            _dense_stats(p.model, p.calib, p.nsamples, p.seqlen, p.seed, data_dir, device) if p.share_stats else None
        )
        plan = prune_(
            model,
            ratio=p.ratio,
            calibration=calib,
            dense_stats=shared,
            method=p.method,
            calibration_info=info,
            device=device,
            seed=p.seed,
            progress=progress,
            **p.options,
        )
        extra = {
            "calib_source": source,
            "ratio_achieved": round(plan.achieved["params_ratio"], 6),
            "heads_pruned": plan.achieved["heads_pruned"],
            "kv_heads_pruned": plan.achieved["kv_heads_pruned"],
            "channels_pruned": plan.achieved["channels_pruned"],
        }
    common = {
        "model_hash": file_hash(model.config._name_or_path) if hasattr(model, "config") else "",
        "params_before": count_params(dense),
        "params_after": count_params(model),
        "versions": plan.versions if plan else {},
        "git_commit": git_commit(),
        **extra,
    }
    rows = []
    for row in eval_rows:
        windows, source = _eval(p.model, row["eval_dataset"], p.eval_seqlen, p.max_windows, data_dir)
        result = perplexity(model, windows, device=device, progress=progress)
        rows.append({**row, **common, "eval_source": source, "eval_windows": result["windows"], "value": result["ppl"]})
    if plan is not None:
        for metric in ("prune_seconds", "peak_rss_gib", "peak_device_gib"):
            if metric in plan.timing and not (p.share_stats and metric != "prune_seconds"):
                name = f"{metric}_excl_dense_pass" if p.share_stats else metric
                rows.append({**_base_row(p), **common, "metric": name, "value": plan.timing[metric]})
    append_rows(results, rows)
    del model
    gc.collect()
    return rows


def run_points(points: list[Point], results: str | Path, data_dir: str | None = None) -> None:
    """``run_point`` for each point, printing one line per new row (what, ratio asked, value, ratio achieved)."""
    for p in points:
        for row in run_point(p, results, data_dir=data_dir):
            where = row.get("eval_dataset", "")
            print(
                row["method"],
                row["ratio"],
                row["metric"],
                where,
                f"{row['value']:.4g}",
                row.get("ratio_achieved", ""),
                flush=True,
            )
