"""Scoring and compensation as Lightning callbacks, thin over the one pipeline (``plan_pruning``/``apply_plan_``).

Lightning's callback rules, as they apply here:

- each callback runs once per run, in ``setup`` of ``trainer.validate`` (before the sanity check, and also when
  the run has no validation batches, only evaluators); it refuses ``trainer.fit``, whose optimizer would keep
  the dense tensors;
- neither relies on the other's presence or order: ``CompensationCallback`` checks its one input, a plan on the
  module (from ``ScoringCallback`` or ``PruningPlan.load``), and ``apply_plan_`` refuses a plan of another model;
- constructor arguments are validated eagerly (``PruneConfig``), before any model is loaded.

Calibration runs on the trainer's device (or the ``device`` option) layer by layer, while the model itself is
still where ``configure_model`` put it. The pipeline runs under ``no_grad`` outside ``inference_mode``, so the
new weights are ordinary tensors: a pruned model can be fine-tuned afterwards.

Distributed calibration (DDP): every process takes its shard of the calibration windows (``rank::world``), the
Gram matrices are summed over processes, and every process computes the same plan and the same new weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from numprune.config import PruneConfig, make_config
from numprune.errors import NumpruneError
from numprune.lit.module import PrunableModule
from numprune.methods import get_method
from numprune.plan import PruningPlan
from numprune.provenance import config_of
from numprune.prune import Reduce, apply_plan_, plan_pruning
from numprune.transform import transform_model_

log = logging.getLogger("numprune")


def _prunable(pl_module: L.LightningModule, who: str) -> PrunableModule:
    if not isinstance(pl_module, PrunableModule):
        raise NumpruneError(f"{who} prunes a numprune.lit.PrunableModule, got {type(pl_module).__name__}")
    return pl_module


def _calibration(trainer: L.Trainer, module: PrunableModule) -> tuple[Tensor, dict]:
    """This process's shard of the calibration rows, and their description (``PrunableModule.calibration``: the
    datamodule's windows for text models, the model's own samples for LlamaGen)."""
    windows, info = module.calibration(getattr(trainer, "datamodule", None))
    world, rank = trainer.world_size, trainer.global_rank
    if windows.shape[0] < world:
        raise NumpruneError(f"{windows.shape[0]} calibration samples cannot be shared by {world} processes")
    return windows[rank::world], {**info, "nsamples": windows.shape[0], "processes": world}


def _reduce(trainer: L.Trainer) -> Reduce | None:
    if trainer.world_size == 1:
        return None
    return lambda t: trainer.strategy.reduce(t, reduce_op="sum")


def _check_same_on_every_rank(trainer: L.Trainer, plan: PruningPlan) -> None:
    """Every process must hold the same plan (same summed statistics -> same scores); stop all if not."""
    if trainer.world_size == 1:
        return
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(lp) for lp in plan.layers]).encode()).hexdigest()
    same = float(trainer.strategy.broadcast(digest, src=0) == digest)
    agree = trainer.strategy.reduce(torch.tensor([same], dtype=torch.float64), reduce_op="sum").item()
    if agree != trainer.world_size:
        raise NumpruneError(f"the processes computed different pruning plans ({agree:.0f}/{trainer.world_size} agree)")


def _refuse_fit(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Surgery inside ``trainer.fit`` would leave the optimizer holding the dense tensors: prune with
    ``trainer.validate`` first (then fit, with or without these callbacks)."""
    if not getattr(pl_module, "plan_applied", False):
        raise NumpruneError(
            "the pruning callbacks prune before evaluation, not inside trainer.fit (the optimizer would keep the "
            "dense weights): run trainer.validate(module) with them first, then trainer.fit"
        )


def _on_device(cfg: PruneConfig, trainer: L.Trainer) -> PruneConfig:
    """Calibrate on the trainer's device unless the options name one: the model stays where it is (usually the
    CPU before the strategy moves it) and the layer-by-layer pass moves one layer at a time."""
    return cfg if cfg.device else dataclasses.replace(cfg, device=str(trainer.strategy.root_device))


class ScoringCallback(L.Callback):
    """Calibration pass -> statistics -> scores -> selection: stores ``module.plan`` (paper Alg. 1, Eq. 8).
    A method that rewrites the model (``scoring="transform"``: slicegpt, depth) runs whole here and leaves the
    plan applied (``CompensationCallback`` then only records it).

    Runs once per run in ``setup`` of ``trainer.validate`` / ``test`` / ``predict`` (before the sanity check and
    whether or not there are validation batches: a run may only have evaluators), and refuses ``trainer.fit``.

    Args:
        ratio, method, **options: a ``PruneConfig`` (validated here, before anything is loaded).
    """

    def __init__(self, ratio: float, method: str = "numerical", **options) -> None:
        options.setdefault("progress", False)
        meth = get_method(method)
        self.cfg = meth.resolve(make_config(ratio, method, **options))
        meth.check(self.cfg)  # unknown method or impossible options: fail now, not after loading
        # The dense statistics of this model and calibration, when a grid computed them once for all points.
        self.dense_stats: list | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            _refuse_fit(trainer, pl_module)
            return
        module = _prunable(pl_module, "ScoringCallback")
        if module.plan is not None:
            return  # once per run: a module that has a plan is not scored again
        calib, info = _calibration(trainer, module)
        module.configure_model()
        meth = get_method(self.cfg.method)
        if meth.scoring == "transform":  # slicegpt, depth: the model is rewritten here, nothing is left to apply
            if trainer.world_size > 1:
                raise NumpruneError(f"{meth.name} rewrites the model on one process; run it without DDP")
            with torch.inference_mode(False), torch.no_grad():
                module.plan = transform_model_(module.model, calib, _on_device(self.cfg, trainer), meth, info)
            module.pruning_stats, module.plan_applied = None, True
            log.info("numprune scoring: %s", module.plan.summary())
            return
        with torch.inference_mode(False), torch.no_grad():
            plan, stats = plan_pruning(
                module.model, calib, _on_device(self.cfg, trainer), calibration_info=info,
                reduce=_reduce(trainer), dense_stats=self.dense_stats,
            )  # fmt: skip
        _check_same_on_every_rank(trainer, plan)
        module.plan, module.pruning_stats, module.plan_applied = plan, stats, False
        a = plan.achieved
        log.info(
            "numprune scoring: %s ratio %.2f -> %d/%d attention units, %d/%d MLP channels to prune (%.1f s)",
            plan.method,
            plan.ratio,
            a["attn_units_pruned"],
            a["attn_units_total"],
            a["channels_pruned"],
            a["channels_total"],
            plan.timing["score_seconds"],
        )


class CompensationCallback(L.Callback):
    """Applies ``module.plan``: the method's repair (Eq. 11 for ``numerical``) and the surgery; logs the summary
    and writes the plan JSON to ``plan_path`` (default: the logger's folder, when there is a logger).

    Runs in ``setup`` like ``ScoringCallback``. Needs a plan on the module (``ScoringCallback``, or
    ``module.plan = PruningPlan.load(path)``); stops with a clear message without one, or with a plan of another
    model.
    """

    def __init__(self, plan_path: str | None = None) -> None:
        self.plan_path = plan_path
        self._recorded = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            _refuse_fit(trainer, pl_module)
            return
        module = _prunable(pl_module, "CompensationCallback")
        if module.plan_applied:
            if module.plan is not None and module.plan.transform and not self._recorded:
                self._record(trainer, module.plan)  # ScoringCallback applied a transform: record its plan once
            return
        plan = module.plan
        if plan is None:
            raise NumpruneError(
                "CompensationCallback found no pruning plan on the module: add ScoringCallback before it "
                "(numprune.lit.pruning_callbacks returns the pair in order) or set module.plan = PruningPlan.load(...)"
            )
        module.configure_model()
        cfg = _on_device(config_of(plan), trainer)
        stats = module.pruning_stats
        needs_calibration = stats is None and get_method(plan.method).needs_stats(cfg)
        calib = _calibration(trainer, module)[0] if needs_calibration else None
        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            apply_plan_(module.model, plan, calib, cfg, stats=stats, reduce=_reduce(trainer))
        module.plan_applied, module.pruning_stats = True, None
        log.info("numprune: %s", summary_line(plan, time.perf_counter() - start))
        self._record(trainer, plan)

    def _record(self, trainer: L.Trainer, plan: PruningPlan) -> None:
        """Log the applied plan's counts and write its JSON to ``plan_path``."""
        self._recorded = True
        if trainer.logger is not None:
            a = plan.achieved
            trainer.logger.log_metrics(
                {
                    "prune/params_before": a["model_params_before"],
                    "prune/params_after": a["model_params_after"],
                    "prune/heads_kept": a["heads_total"] - a["heads_pruned"],
                    "prune/channels_kept": a["channels_total"] - a["channels_pruned"],
                    "prune/seconds": plan.timing["prune_seconds"],
                }
            )
        path = self.plan_path or (
            Path(trainer.log_dir) / "pruning_plan.json" if trainer.logger and trainer.log_dir else None
        )
        if path is not None and trainer.is_global_zero:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            plan.save(path)


def summary_line(plan: PruningPlan, seconds: float | None = None) -> str:
    """Parameters before/after, heads and channels kept, time: one line."""
    a, t = plan.achieved, plan.timing
    if plan.transform:  # slicegpt, depth: what was sliced or removed
        return f"{plan.summary()}, {t.get('prune_seconds', 0):.1f} s"
    return (
        f"{plan.method} {plan.ratio:.0%}: params {a['model_params_before']:,} -> {a['model_params_after']:,} "
        f"({a['params_ratio']:.3f} of attention+MLP removed), heads kept {a['heads_total'] - a['heads_pruned']}"
        f"/{a['heads_total']}, channels kept {a['channels_total'] - a['channels_pruned']}/{a['channels_total']}, "
        f"score {t.get('score_seconds', 0):.1f} s + apply {t.get('apply_seconds', seconds or 0):.1f} s{plan.notes()}"
    )


def pruning_callbacks(ratio: float, method: str = "numerical", **options) -> list[L.Callback]:
    """``[ScoringCallback, CompensationCallback]`` for a method, in the order they must run."""
    plan_path = options.pop("plan_path", None)
    return [ScoringCallback(ratio, method, **options), CompensationCallback(plan_path=plan_path)]
