"""The LightningModules numprune runs: ``PrunableModule`` (what the runner and the pruning callbacks need) and
``CausalLMModule`` (a causal LM; validation is token-level perplexity over windows).

The model is loaded in ``configure_model`` (not ``__init__``), so parsing a config or building the module is
cheap and each process loads its own copy. Scoring and compensation are callbacks (``numprune.lit.callbacks``)
that store the pruning plan on the module (``module.plan``) before validation runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection, SumMetric

from numprune.config import DTYPE_NAMES, parse_dtype
from numprune.errors import NumpruneError
from numprune.eval.perplexity import window_nll
from numprune.plan import PruningPlan


class PrunableModule(L.LightningModule):
    """A module whose ``model`` the pruning callbacks prune, and which tells the runner what its result rows are.

    Subclasses implement the five methods below; the plan state is shared.
    """

    def __init__(self) -> None:
        super().__init__()
        self.model: Any = None  # a Hugging Face model, a LlamaGen GPT, ...: loaded in configure_model
        self.plan: PruningPlan | None = None  # set by ScoringCallback (or by hand: PruningPlan.load)
        self.plan_applied = False  # set by CompensationCallback
        self.pruning_stats: list | None = None  # dense statistics kept between scoring and compensation

    def calibration(self, datamodule: Any = None) -> tuple[Tensor, dict]:
        """All calibration rows ``[nsamples, seqlen]`` and how they were made (for the plan and the rows)."""
        raise NotImplementedError

    def preflight(self, datamodule: Any = None) -> list[str]:
        """What a run lacks (files that are not there, ...), checked before any model is loaded."""
        return []

    def run_context(self, datamodule: Any = None) -> dict[str, Any]:
        """The result-row columns fixed by the model and the calibration (``model``, ``seed``, ``calib_*``, ...)."""
        raise NotImplementedError

    def planned_rows(self, datamodule: Any = None) -> list[dict[str, Any]]:
        """Per measurement of a validation run: its ``eval_dataset``, ``eval_seqlen`` and ``metric`` (resume keys)."""
        raise NotImplementedError

    def measured_rows(self, datamodule: Any = None) -> list[dict[str, Any]]:
        """After validation: the planned rows with ``value``, ``eval_source`` and ``eval_windows`` filled in."""
        raise NotImplementedError

    def save_pruned_model(self, path: Path, datamodule: Any = None) -> None:
        """Save the (pruned) model so that it reloads."""
        raise NotImplementedError

    def set_output(self, folder: Path | None, stem: str) -> None:
        """Where this run may write its own files (samples, caches), next to the results."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.plan is not None:  # the plan travels with the run (shapes of the pruned state dict)
            checkpoint["pruning_plan"] = self.plan.to_dict()
            checkpoint["pruning_plan_applied"] = self.plan_applied


class CausalLMModule(PrunableModule):
    """Wraps a causal LM (alias ``smollm2``, hub ID or folder) for calibration, evaluation and fine-tuning.

    Validation logs, per evaluation set ``NAME``, ``val/ppl/NAME``, ``val/windows/NAME``, ``val/tokens/NAME``
    (over all processes: exactly ``numprune.eval.perplexity.perplexity`` on all windows), and ``val/ppl``,
    ``val/windows``, ``val/tokens`` for the first set.

    Args:
        model: model alias, hub ID or folder.
        dtype: ``fp32``, ``fp16`` or ``bf16`` weights (calibration statistics are float64 whatever this is).
        lr: learning rate of ``training_step`` (recovery fine-tuning; not part of the paper's method).
    """

    def __init__(self, model: str = "smollm2", dtype: str = "fp16", lr: float = 1e-5) -> None:
        super().__init__()
        if dtype not in DTYPE_NAMES:
            raise NumpruneError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
        self.save_hyperparameters()
        self.model_name = model
        self.sums: nn.ModuleList = nn.ModuleList()  # per evaluation set: summed NLL, tokens, windows
        self.results: dict[str, dict[str, float]] = {}  # the last validation: per set ppl, windows, tokens

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: Any) -> CausalLMModule:
        """Wrap an already built model (tests, notebooks)."""
        module = cls(model=str(getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory"), **kwargs)
        module.model = model
        return module

    def configure_model(self) -> None:
        if self.model is None:  # called by every trainer.fit/validate: load once
            from numprune.hub import load_model

            self.model, _ = load_model(self.model_name, dtype=parse_dtype(self._h.dtype))

    @property
    def _h(self) -> Any:
        return self.hparams  # an AttributeDict of the init arguments

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    # --- evaluation: summed NLL, tokens and windows per set (torchmetrics sums them over processes) -----------
    def on_validation_epoch_start(self) -> None:
        n = len(self._eval_names()) or 1
        self.sums = nn.ModuleList(
            MetricCollection({k: SumMetric() for k in ("nll", "tokens", "windows")}).set_dtype(torch.float64)
            for _ in range(n)
        ).to(self.device)

    def validation_step(self, batch: list[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        nll, count = window_nll(self.model, batch[0])
        if not torch.isfinite(nll):
            raise NumpruneError(f"non-finite loss in batch {batch_idx} of evaluation set {dataloader_idx}")
        sums: Any = self.sums[dataloader_idx]
        sums["nll"].update(nll)
        sums["tokens"].update(float(count))
        sums["windows"].update(float(batch[0].shape[0]))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        names = self._eval_names() or [f"set{i}" for i in range(len(self.sums))]
        self.results = {}
        for idx, name in enumerate(names):
            sums: Any = self.sums[idx]
            total = {k: float(v) for k, v in sums.compute().items()}
            ppl = math.exp(total["nll"] / total["tokens"]) if total["tokens"] else float("nan")
            self.results[name] = {"ppl": ppl, "windows": total["windows"], "tokens": total["tokens"]}
            for key, value in self.results[name].items():
                self.log(f"val/{key}/{name}", value, sync_dist=False, rank_zero_only=True)
                if idx == 0:
                    self.log(f"val/{key}", value, sync_dist=False, rank_zero_only=True)

    def _eval_names(self) -> list[str]:
        dm = getattr(self._trainer, "datamodule", None)
        return list(getattr(dm, "evals", None) or [])

    # --- what the runner asks ----------------------------------------------------------------------------
    def calibration(self, datamodule: Any = None) -> tuple[Tensor, dict]:
        if datamodule is None:
            raise NumpruneError("CausalLMModule takes its calibration windows from a TextDataModule")
        return datamodule.calibration()

    def preflight(self, datamodule: Any = None) -> list[str]:
        from numprune.hub import missing_model

        problem = missing_model(self.model_name)
        return [problem] if problem else []

    def run_context(self, datamodule: Any = None) -> dict[str, Any]:
        from numprune.hub import resolve
        from numprune.results import file_hash, portable

        h = datamodule.hparams
        local = Path(resolve(self.model_name))
        return {
            "model": portable(self.model_name),
            "model_hash": file_hash(local) if local.exists() else "",
            "seed": h.seed,
            "calib_dataset": h.calib if not Path(h.calib).is_file() else portable(h.calib),
            "calib_nsamples": h.nsamples,
            "calib_seqlen": h.seqlen,
        }

    def planned_rows(self, datamodule: Any = None) -> list[dict[str, Any]]:
        from numprune.results import portable

        seqlen = datamodule.hparams.eval_seqlen
        return [{"eval_dataset": portable(n), "eval_seqlen": seqlen, "metric": "ppl"} for n in datamodule.evals]

    def measured_rows(self, datamodule: Any = None) -> list[dict[str, Any]]:
        rows = []
        for name, row in zip(datamodule.evals, self.planned_rows(datamodule)):
            r = self.results[name]
            rows.append({**row, "value": r["ppl"], "eval_windows": int(r["windows"]), "bos": datamodule.bos,
                         "eval_source": datamodule.eval_set(name)[1]})  # fmt: skip
        return rows

    def save_pruned_model(self, path: Path, datamodule: Any = None) -> None:
        from numprune.save import save_pruned

        save_pruned(self.model, path, self.plan, getattr(datamodule, "tokenizer", None), overwrite=True)

    # --- fine-tuning (after pruning: the pruned model is an ordinary nn.Module with ordinary parameters) ------
    def on_train_start(self) -> None:
        self.model.train()  # load_model returns the model in eval mode

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        ids = batch[0]
        loss = self.model(input_ids=ids, labels=ids, use_cache=False).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self._h.lr)
