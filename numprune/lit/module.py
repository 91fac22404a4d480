"""``CausalLMModule``: a causal LM under Lightning. Validation is token-level perplexity over windows.

The model is loaded in ``configure_model`` (not ``__init__``), so parsing a config or building the module is
cheap and each process loads its own copy. Scoring and compensation are callbacks (``numprune.lit.callbacks``)
that store the pruning plan on the module (``module.plan``) before validation runs.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from numprune.errors import NumpruneError
from numprune.eval.perplexity import window_nll
from numprune.plan import PruningPlan

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CausalLMModule(L.LightningModule):
    """Wraps a causal LM (alias ``smollm2``, hub ID or folder) for calibration, evaluation and fine-tuning.

    Validation logs, per evaluation set ``NAME``, ``val/ppl/NAME``, ``val/windows/NAME``, ``val/tokens/NAME``
    (summed over processes: exactly ``numprune.eval.perplexity.perplexity`` on all windows), and
    ``val/ppl``, ``val/windows``, ``val/tokens`` for the first set.

    Args:
        model: model alias, hub ID or folder.
        dtype: ``fp32``, ``fp16`` or ``bf16`` weights (calibration statistics are float64 whatever this is).
        lr: learning rate of ``training_step`` (recovery fine-tuning; not part of the paper's method).
    """

    def __init__(self, model: str = "smollm2", dtype: str = "fp16", lr: float = 1e-5) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise NumpruneError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.save_hyperparameters()
        self.model_name = model
        self.model: nn.Module | None = None
        self.plan: PruningPlan | None = None  # set by ScoringCallback (or by hand: PruningPlan.load)
        self.plan_applied = False  # set by CompensationCallback
        self.pruning_stats: list | None = None  # dense statistics kept between scoring and compensation
        self._sums: dict[int, Tensor] = {}  # per evaluation set: [summed NLL, tokens, windows]

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: Any) -> CausalLMModule:
        """Wrap an already built model (tests, notebooks)."""
        module = cls(model=str(getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory"), **kwargs)
        module.model = model
        return module

    def configure_model(self) -> None:
        if self.model is None:  # called by every trainer.fit/validate: load once
            from numprune.hub import load_model

            self.model, _ = load_model(self.model_name, dtype=DTYPES[self.hparams.dtype])

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    # Evaluation: sums of NLL and predicted tokens per evaluation set, reduced over processes at the end.
    def on_validation_epoch_start(self) -> None:
        self._sums = {}

    def validation_step(self, batch: list[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        nll, count = window_nll(self.model, batch[0])
        if not torch.isfinite(nll):
            raise NumpruneError(f"non-finite loss in batch {batch_idx} of evaluation set {dataloader_idx}")
        step = torch.stack([nll, nll.new_tensor(count), nll.new_tensor(batch[0].shape[0])])
        self._sums[dataloader_idx] = self._sums.get(dataloader_idx, torch.zeros_like(step)) + step

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        names = getattr(self.trainer.datamodule, "eval_names", None) or []
        n_sets = len(names) or (max(self._sums) + 1 if self._sums else 0)
        for idx in range(n_sets):
            local = self._sums.get(idx, torch.zeros(3, dtype=torch.float64, device=self.device))
            nll, tokens, windows = self.trainer.strategy.reduce(local.clone(), reduce_op="sum").tolist()
            name = names[idx] if idx < len(names) else f"set{idx}"
            metrics = {"ppl": math.exp(nll / tokens) if tokens else float("nan"), "windows": windows, "tokens": tokens}
            for key, value in metrics.items():
                self.log(f"val/{key}/{name}", value, sync_dist=False, rank_zero_only=True)
                if idx == 0:
                    self.log(f"val/{key}", value, sync_dist=False, rank_zero_only=True)

    # Fine-tuning (after pruning: the pruned model is an ordinary nn.Module with ordinary parameters).
    def on_train_start(self) -> None:
        self.model.train()  # load_model returns the model in eval mode

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        ids = batch[0]
        loss = self.model(input_ids=ids, labels=ids, use_cache=False).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.plan is not None:  # the plan travels with the run (shapes of the pruned state dict)
            checkpoint["pruning_plan"] = self.plan.to_dict()
            checkpoint["pruning_plan_applied"] = self.plan_applied
