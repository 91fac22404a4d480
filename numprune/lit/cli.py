"""``numprune run CONFIG.yaml [--key=value ...]``: a LightningCLI over ``CausalLMModule`` + ``TextDataModule``.

Overrides use LightningCLI syntax (``--model.model=...``, ``--data.nsamples=32``, ``--trainer.devices=2``,
``--grid.ratios=[0.5]``). A config lists only what differs from the defaults of the classes below; the paper's
protocol is the default (128 x 2048 WikiText-2 train calibration; WikiText-2/PTB/C4 perplexity at 2048).
Every grid point is its own LightningCLI instantiation (a fresh model, datamodule and trainer with the pruning
callbacks), then ``trainer.validate``; rows are appended by global rank 0 and a rerun skips finished points.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningCLI

from numprune.errors import NumpruneError
from numprune.lit.callbacks import pruning_callbacks, summary_line
from numprune.lit.data import TextDataModule
from numprune.lit.experiment import (
    Evaluator,
    Grid,
    RunPoint,
    expand,
    is_done,
    resolve_function,
    result_rows,
    run_evaluator,
    to_point,
)
from numprune.lit.module import CausalLMModule
from numprune.results import append_rows
from numprune.save import save_pruned

log = logging.getLogger("numprune")
TRAINER_DEFAULTS = {
    "devices": 1,  # DDP calibration is opt-in: --trainer.devices=N --trainer.strategy=ddp
    "logger": False,  # rows go to the results CSV and plans next to it; add a logger in a config if wanted
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,
    "inference_mode": True,  # the pruning callbacks leave inference mode themselves (see callbacks.py)
    "use_distributed_sampler": True,  # TextDataModule's ShardSampler is kept as it is (no padding duplicates)
}


class NumpruneCLI(LightningCLI):
    def __init__(self, args: list[str], parse_only: bool = False, **kwargs: Any) -> None:
        self.parse_only = parse_only  # validate the config without building the model, data or trainer
        # ``numprune run`` hands over its own argv (sys.argv stays intact for DDP's re-launch of the command).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        super().__init__(
            CausalLMModule,
            TextDataModule,
            args=args,
            run=False,
            save_config_callback=None,
            seed_everything_default=0,
            trainer_defaults=TRAINER_DEFAULTS,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--experiment", type=str, default="run", help="experiment name in the results rows")
        parser.add_argument("--results", type=str | None, default=None, help="results CSV (None: print rows)")
        parser.add_argument("--method", type=str, default="numerical", help="method of a single run")
        parser.add_argument("--ratio", type=float, default=0.0, help="ratio of a single run (0: dense)")
        parser.add_argument("--label", type=str | None, default=None, help="method label in the CSV")
        parser.add_argument("--prune", type=dict[str, Any], default={}, help="PruneConfig fields")
        parser.add_dataclass_arguments(Grid, "grid")
        parser.add_argument("--evaluate", type=list[Evaluator], default=[], help="evaluations beyond perplexity")
        parser.add_argument("--save_models", type=bool, default=False, help="save each pruned model by the CSV")
        parser.add_argument("--dry_run", type=bool, default=False, help="list the points and exit")
        parser.link_arguments("model.model", "data.tokenizer")

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self.config
        if cfg.ratio > 0:
            path = plan_path(cfg, cfg.model.model, cfg.label or cfg.method, cfg.ratio, cfg.data.nsamples)
            cbs = pruning_callbacks(cfg.ratio, cfg.method, plan_path=path, **cfg.prune)
            trainer_cfg = self._get(self.config_init, "trainer", default={})
            kwargs["callbacks"] = [*(trainer_cfg.get("callbacks") or []), *cbs]
        return super().instantiate_trainer(**kwargs)


def plan_path(cfg, model: str, label: str, ratio: float, nsamples: int) -> str | None:
    if not cfg.results:
        return None
    name = f"{Path(model).name}-{label}-{ratio:g}-n{nsamples}.json"
    return str(Path(cfg.results).with_suffix("") / "plans" / name)


def run_config(config: str, overrides: list[str]) -> list[dict[str, Any]]:
    """Run (or, with ``--dry_run=true``, list) every point of a config; returns the rows written."""
    raw = yaml.safe_load(Path(config).read_text()) if Path(config).is_file() else None
    if isinstance(raw, dict) and raw.get("runner") == "llamagen":
        from numprune.lit.llamagen_run import run_llamagen

        return run_llamagen(raw, overrides)
    args = [f"--config={config}", *overrides]
    cfg = NumpruneCLI(args, parse_only=True).config
    prune = dict(cfg.prune)
    points = expand(Grid(**vars(cfg.grid)), cfg.model.model, cfg.method, cfg.ratio, cfg.data.nsamples, prune)
    evaluators = [Evaluator(**vars(e)) if not isinstance(e, Evaluator) else e for e in cfg.evaluate]
    data = vars(cfg.data)
    if cfg.dry_run:
        return dry_run(cfg, points, evaluators, data)
    if "ddp" in str(cfg.trainer.strategy) and "LOCAL_RANK" not in os.environ and len(points) > 1:
        # Lightning's own launcher re-runs the command per Trainer; a grid makes one Trainer per point.
        raise NumpruneError(
            "a multi-process grid runs under torchrun: torchrun --nproc_per_node=N -m numprune.cli run "
            f"{config} --trainer.strategy=ddp --trainer.devices=N ... (docs/distributed.md)"
        )
    written: list[dict[str, Any]] = []
    for p in points:
        point = to_point(cfg.experiment, p, data)
        # Every process makes the same decision: rows of a point are written only after its collective run.
        if is_done(cfg.results, point, evaluators):
            log.info("numprune run: %s %s %s already in %s, skipped", p.model, p.label, p.ratio, cfg.results)
            continue
        written += run_point(args, p, point, evaluators, cfg.results, cfg.save_models)
    return written


def run_point(
    args: list[str], p: RunPoint, point, evaluators: list[Evaluator], results: str | None, save: bool = False
) -> list[dict]:
    cli = NumpruneCLI([*args, *p.overrides()])
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    trainer.validate(module, datamodule=dm, verbose=False)
    if module.plan is not None:
        log.warning("numprune run: %s", summary_line(module.plan))
        path = plan_path(cli.config, p.model, p.label, p.ratio, p.nsamples)
        if save and path and trainer.is_global_zero:
            save_pruned(
                module.model, Path(path).parent.parent / "models" / Path(path).stem, module.plan, dm.tokenizer, True
            )
    extra = [r for ev in evaluators for r in run_evaluator(ev, module.model, dm.tokenizer)]
    rows = result_rows(point, module, trainer.callback_metrics, dm, extra) if trainer.is_global_zero else []
    if rows and results:
        append_rows(results, rows)
    elif rows:
        print(json.dumps(rows, default=str))
    return rows


def dry_run(cfg, points: list[RunPoint], evaluators: list[Evaluator], data: dict) -> list[dict[str, Any]]:
    """Print the points (and whether they are done) and check that every evaluator can be imported."""
    for ev in evaluators:
        try:
            resolve_function(ev.function)
            status = "available"
        except NumpruneError as err:
            status = f"NOT AVAILABLE: {err}"
        print(f"evaluator {ev.name}: {ev.function} ({status})")
    for p in points:
        done = is_done(cfg.results, to_point(cfg.experiment, p, data), evaluators)
        print(f"{'done' if done else 'todo'}  {' '.join(p.overrides())}")
    print(f"{len(points)} points, experiment {cfg.experiment}, results {cfg.results}")
    return []
