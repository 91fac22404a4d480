"""``numprune run CONFIG.yaml [--key=value ...]``: one LightningCLI for every config, text LLMs and LlamaGen.

The module is any ``numprune.lit.PrunableModule`` (default ``CausalLMModule``), the datamodule any
LightningDataModule (default ``TextDataModule``; ``data: null`` for modules that make their own data, such as
``LlamaGenModule``). Overrides use LightningCLI syntax everywhere: ``--model.model=...``, ``--data.nsamples=32``,
``--model.calibration.images_per_class=2``, ``--trainer.devices=2``, ``--grid.ratios=[0.5]``. A config lists only
what differs from the defaults of the classes. Every grid point is its own instantiation (a fresh model,
datamodule and trainer with the pruning callbacks), run by ``numprune.runner``.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from numprune.errors import NumpruneError
from numprune.evaluators import Evaluator
from numprune.points import Grid

TRAINER_DEFAULTS: dict[str, Any] = {
    "devices": 1,  # DDP calibration is opt-in: --trainer.devices=N --trainer.strategy=ddp
    "logger": False,  # rows go to the results CSV and plans next to it; add a logger in a config if wanted
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,
    "inference_mode": True,  # the pruning callbacks leave inference mode themselves (see callbacks.py)
}
DEFAULT_CLASSES = {"model": "numprune.lit.CausalLMModule", "data": "numprune.lit.TextDataModule"}


class NumpruneCLI(LightningCLI):
    """LightningCLI with numprune's experiment keys; ``callbacks`` are added to the trainer of this run."""

    def __init__(self, args: Sequence[str], callbacks: Sequence[L.Callback] = (), build: str = "all") -> None:
        # "parse": validate the config only; "classes": module and datamodule (cheap: no weights), no trainer
        self.build = build
        # ``numprune run`` hands over its own argv (sys.argv stays intact for DDP's re-launch of the command).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        super().__init__(
            L.LightningModule,
            None,
            subclass_mode_model=True,
            args=list(args),
            run=False,
            save_config_callback=None,
            seed_everything_default=0,
            trainer_defaults={**TRAINER_DEFAULTS, "callbacks": list(callbacks)},  # Lightning's persistent callbacks
            parser_kwargs={"exit_on_error": False},  # config errors become one line (config_error)
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({k: {"class_path": v} for k, v in DEFAULT_CLASSES.items()})
        parser.add_argument("--experiment", type=str, default="run", help="experiment name in the results rows")
        parser.add_argument("--results", type=str | None, default=None, help="results CSV (None: print rows)")
        parser.add_argument("--method", type=str, default="numerical", help="method of a single run")
        parser.add_argument("--ratio", type=float, default=0.0, help="ratio of a single run (0: dense)")
        parser.add_argument("--label", type=str | None, default=None, help="method label in the CSV")
        parser.add_argument("--prune", type=dict[str, Any], default={}, help="PruneConfig fields of every point")
        parser.add_dataclass_arguments(Grid, "grid")
        parser.add_argument("--evaluate", type=list[Evaluator], default=[], help="evaluations beyond validation")
        parser.add_argument("--save_models", type=bool, default=False, help="save each pruned model by the CSV")
        parser.add_argument("--dry_run", type=bool, default=False, help="list the points and exit")

    def instantiate_classes(self) -> None:
        if self.build == "all":
            super().instantiate_classes()
        elif self.build == "classes":
            self.config_init = self.parser.instantiate_classes(self.config)
            self.model, self.datamodule = self.config_init.model, self.config_init.get("data")


@dataclass
class Run:
    """The instantiated classes of one point."""

    module: Any
    datamodule: Any
    trainer: L.Trainer | None


@functools.cache
def _parser():
    """One parser for every config a process parses (building LightningCLI's parser costs more than parsing).
    Only for parsing: its instantiators belong to the CLI that built it (hyperparameters would be stale)."""
    return NumpruneCLI([], build="parse").parser


def instantiate(args: Sequence[str], callbacks: Sequence[L.Callback] = (), trainer: bool = True) -> Run:
    """Module, datamodule and (unless ``trainer=False``) trainer of one point; models load later, in
    ``configure_model``."""

    # "GPU available: False ...", "Seed set to 0" once per point of a grid are noise
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        cli = NumpruneCLI(args, callbacks, build="all" if trainer else "classes")
    except ArgumentError as err:
        raise config_error(err) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return _checked(Run(cli.model, cli.datamodule, cli.trainer if trainer else None))


def _checked(run: Run) -> Run:
    from numprune.lit.data import TextDataModule
    from numprune.lit.module import PrunableModule

    if not isinstance(run.module, PrunableModule):
        raise NumpruneError(f"model: {type(run.module).__name__} is not a numprune.lit.PrunableModule")
    if isinstance(run.datamodule, TextDataModule) and run.datamodule.tokenizer_name is None:
        run.datamodule.tokenizer_name = getattr(run.module, "model_name", None)  # the model's own tokenizer
    return run


def parse(args: Sequence[str]):
    """The parsed config (no class is built); a wrong key or value ends in one ``NumpruneError`` line."""
    try:
        return _parser().parse_args(list(args))
    except ArgumentError as err:
        raise config_error(err) from None


_NOISE = ("Does not validate", "Subtypes:", "Errors:", "- Problem with", "Given value", "- Expected a <class 'NoneT")


def config_error(err: Exception) -> NumpruneError:
    """jsonargparse's nested report as one line: the key path and the innermost reason."""
    text = str(err)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    reasons = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(_NOISE)]
    reasons = [r for r in reasons if not r.startswith("Parser key")]
    where = ".".join(keys) + ": " if keys else ""
    return NumpruneError(f"config: {where}{reasons[-1] if reasons else text.splitlines()[0]}")
