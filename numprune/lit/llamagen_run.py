"""``numprune run`` for ``runner: llamagen`` configs: models x (dense, methods x ratios), one Lightning run each.

Every point is a fresh ``LlamaGenModule`` and ``Trainer`` with the pruning callbacks, then ``trainer.validate``
(calibrate -> score -> compensate -> generate -> FID & co.). Rows go to the results CSV in the one schema:

- ``metric``: ``fid``, ``sfid``, ``is``, ``precision``, ``recall`` (``metrics.names``), plus ``prune_seconds``,
  ``peak_rss_gib`` (``peak_device_gib`` on a GPU) and ``calib_generate_seconds`` for pruned points;
- ``eval_dataset``: ``<reference stem>:<num_samples>`` (FID at 5k and at 50k are different numbers),
  ``eval_seqlen``: the evaluation image size, ``eval_windows``: images generated, ``eval_source``: the reference
  path and the sampling settings; ``seed``: the generation seed;
- ``calib_dataset``: ``self-generated:<images per class>x<classes>``, ``calib_nsamples``: calibration rows,
  ``calib_seqlen``: tokens per row, ``calib_source``: the calibration sampling settings.

A point whose metric rows are all in the CSV is skipped, so an interrupted grid resumes. Plans, calibration
rows (shared by every method and ratio of a model), samples and saved models go next to the CSV.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from numprune.errors import NumpruneError
from numprune.lit.llamagen_config import (
    GenPoint,
    LlamaGenConfig,
    check_ready,
    class_ids,
    model_config,
    parse_config,
    points,
)
from numprune.results import append_rows, file_hash, git_commit, read_rows, row_key

log = logging.getLogger("numprune")


def run_llamagen(raw: dict[str, Any], overrides: list[str]) -> list[dict[str, Any]]:
    """Run (or, with ``--dry_run=true``, list) every point of a LlamaGen config; returns the rows written."""
    cfg = parse_config(raw, overrides)
    pts = points(cfg)
    if cfg.dry_run:
        return dry_run(cfg, pts)
    problems = check_ready(cfg)
    if problems:  # before any model is loaded, not after hours of the first points
        raise NumpruneError(f"the LlamaGen grid cannot start: {'; '.join(problems)} (--dry_run=true lists it)")
    written: list[dict[str, Any]] = []
    for p in pts:
        if is_done(cfg, p):
            log.info("numprune run: %s already in %s, skipped", p.label, cfg.results)
            continue
        written += run_point(cfg, p)
    return written


def dry_run(cfg: LlamaGenConfig, pts: list[GenPoint]) -> list[dict[str, Any]]:
    for problem in check_ready(cfg):
        print(f"note: {problem}")
    for p in pts:
        print(f"{'done' if is_done(cfg, p) else 'todo'}  {p.label} (cfg {p.model.cfg_scale}) {json.dumps(p.options)}")
    print(f"{len(pts)} points, experiment {cfg.experiment}, results {cfg.results}")
    return []


def _out(cfg: LlamaGenConfig, kind: str, name: str) -> str | None:
    return str(Path(cfg.results).with_suffix("") / kind / name) if cfg.results else None


def base_row(cfg: LlamaGenConfig, p: GenPoint) -> dict[str, Any]:
    """The key columns of a point's rows (everything that changes its numbers)."""
    mc, c = model_config(cfg, p.model), cfg.calibration
    n = len(class_ids(c.classes, mc.num_classes, "calibration.classes"))
    pruned = p.ratio > 0
    return {
        "experiment": cfg.experiment,
        "model": p.model.name,
        "method": p.method,
        "ratio": p.ratio,
        "ratio_of": p.options.get("ratio_of", "params"),
        "seed": cfg.generation.seed,
        "calib_dataset": f"{c.source}:{c.images_per_class}x{n}" if pruned else "",
        "calib_nsamples": c.images_per_class * n if pruned else "",
        "calib_seqlen": mc.block_size if pruned else "",
        "eval_dataset": f"{Path(cfg.metrics.reference).stem}:{cfg.generation.num_samples}",
        "eval_seqlen": cfg.eval_size or "",
        "options": json.dumps(p.options, sort_keys=True),
    }


def is_done(cfg: LlamaGenConfig, p: GenPoint) -> bool:
    """Whether every metric row of the point is in the CSV."""
    if not cfg.results or not Path(cfg.results).exists():
        return False
    keys = {row_key(r) for r in read_rows(cfg.results)}
    base = base_row(cfg, p)
    return all(row_key({**base, "metric": m}) in keys for m in cfg.metrics.names)


@functools.lru_cache(maxsize=8)
def _hash(path: str, mtime: int) -> str:
    return file_hash(path)


def run_point(cfg: LlamaGenConfig, p: GenPoint) -> list[dict[str, Any]]:
    """One Lightning run: calibrate, prune (ratio > 0), generate, score; the rows appended to the CSV."""
    import lightning as L

    from numprune.lit.callbacks import pruning_callbacks, summary_line
    from numprune.lit.cli import TRAINER_DEFAULTS
    from numprune.lit.llamagen_module import LlamaGenModule

    base = base_row(cfg, p)
    stem = f"{p.model.name}-{p.method}-{p.ratio:g}"
    calib_name = f"{p.model.name}-{base['calib_dataset'].replace(':', '-')}-seed{cfg.calibration.seed}.pt"
    module = LlamaGenModule(
        p.model,
        cfg.tokenizer,
        cfg.calibration,
        cfg.generation,
        cfg.metrics,
        image_size=cfg.image_size,
        eval_size=cfg.eval_size,
        precision=cfg.precision,
        sample_dir=_out(cfg, "samples", stem),
        calibration_cache=_out(cfg, "calibration", calib_name) if p.ratio > 0 else None,
    )
    callbacks = []
    if p.ratio > 0:
        plan_file = _out(cfg, "plans", f"{stem}-{base['calib_dataset'].replace(':', '-')}.json")
        callbacks = pruning_callbacks(p.ratio, p.method, plan_path=plan_file, **p.options)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    trainer = L.Trainer(**{**TRAINER_DEFAULTS, **cfg.trainer, "callbacks": callbacks})
    trainer.validate(module, verbose=False)
    if not trainer.is_global_zero:
        return []
    plan = module.plan
    if plan is not None:
        log.warning("numprune run: %s", summary_line(plan))
        if cfg.save_models and cfg.results:
            from numprune.models.llamagen_io import save_llamagen

            save_llamagen(module.model, _out(cfg, "models", stem), plan=plan, overwrite=True)
    rows = result_rows(cfg, p, module, base)
    if cfg.results:
        append_rows(cfg.results, rows)
    else:
        print(json.dumps(rows, default=str))
    del module, trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def result_rows(cfg: LlamaGenConfig, p: GenPoint, module, base: dict[str, Any]) -> list[dict[str, Any]]:
    from numprune.prune import count_params

    plan, g = module.plan, cfg.generation
    ckpt = p.model.checkpoint
    sampling = f"cfg={p.model.cfg_scale} temperature={g.temperature} top_k={g.top_k} top_p={g.top_p}"
    common: dict[str, Any] = {
        "model_hash": _hash(ckpt, Path(ckpt).stat().st_mtime_ns) if ckpt and Path(ckpt).is_file() else "",
        "params_after": count_params(module.model),
        "params_before": plan.achieved["model_params_before"] if plan else count_params(module.model),
        "eval_source": f"{cfg.metrics.reference} {sampling}",
        "eval_windows": int(module.scores.get("num_generated", 0)),
        "versions": plan.versions if plan else {"torch": torch.__version__},
        "git_commit": git_commit(),
    }
    if plan is not None:
        a = plan.achieved
        common.update(
            calib_source=plan.calibration.get("source", ""),
            ratio_achieved=round(a["params_ratio"], 6),
            heads_pruned=a["heads_pruned"],
            kv_heads_pruned=a["kv_heads_pruned"],
            channels_pruned=a["channels_pruned"],
        )
    rows = [{**base, **common, "metric": m, "value": module.scores[m]} for m in cfg.metrics.names]
    if plan is not None:
        timing = {**plan.timing, "calib_generate_seconds": module.calibration_seconds}
        for metric in ("prune_seconds", "peak_rss_gib", "peak_device_gib", "calib_generate_seconds"):
            if timing.get(metric):  # 0: the calibration rows came from the cache
                rows.append({**base, **common, "metric": metric, "value": timing[metric]})
    return rows
