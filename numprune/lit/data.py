"""Seeded calibration and evaluation windows as a LightningDataModule (local data directory or the hub).

Calibration windows are not batched through a DataLoader: the scoring callback takes the whole
``[nsamples, seqlen]`` tensor (every process draws the same seeded windows and takes its own shard). Evaluation
windows are one validation DataLoader per evaluation set; under DDP each process reads its own shard without
the padding duplicates of Lightning's default sampler, so window and token counts stay exact.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from numprune.data import bos_token, calibration_windows, eval_windows, load_corpus
from numprune.errors import NumpruneError

DEFAULT_EVALS = ("wikitext2", "ptb", "c4")  # the paper's perplexity sets


def load_tokenizer(name: str):
    """Tokenizer of a model alias (``smollm2``), hub ID or local folder."""
    from transformers import AutoTokenizer

    from numprune.hub import resolve

    try:
        return AutoTokenizer.from_pretrained(resolve(name))
    except OSError as err:
        raise NumpruneError(f"cannot load the tokenizer of {name!r}: {str(err).splitlines()[0]}") from None


class TextDataModule(L.LightningDataModule):
    """Calibration windows (paper: 128 x 2048 from WikiText-2 train) and perplexity windows (WikiText-2, PTB,
    C4 at 2048, non-overlapping; C4: 256 seeded random windows).

    Args:
        tokenizer: model alias, hub ID or folder whose tokenizer to use (None: the module's model, set by
            ``numprune.lit.cli.instantiate``).
        calib: ``NAME[:SPLIT]`` (default split ``train``) or a text file.
        nsamples, seqlen, seed: calibration windows, drawn at seeded random positions.
        evals: evaluation sets ``NAME[:SPLIT]`` (default split ``test``; C4 ``validation``) or text files.
        eval_seqlen, max_windows, c4_windows: evaluation windows (``max_windows``: the first W only).
        data_dir: local corpora (default ``$NUMPRUNE_DATA_DIR``); the hub is the fallback.
        batch_size: evaluation windows per forward.
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        calib: str = "wikitext2",
        nsamples: int = 128,
        seqlen: int = 2048,
        seed: int = 0,
        evals: list[str] | None = None,
        eval_seqlen: int = 2048,
        max_windows: int | None = None,
        c4_windows: int = 256,
        data_dir: str | None = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        if nsamples < 1 or seqlen < 2 or eval_seqlen < 2 or batch_size < 1:
            raise NumpruneError("nsamples, batch_size >= 1 and seqlen, eval_seqlen >= 2 are required")
        self.save_hyperparameters()
        self.tokenizer_name = tokenizer
        self.evals = list(evals) if evals is not None else list(DEFAULT_EVALS)
        self._tokenizer = None
        self._calib: tuple[Tensor, dict] | None = None
        self._eval: dict[str, tuple[Tensor, str]] = {}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise NumpruneError("TextDataModule has no tokenizer: pass tokenizer= (a model alias or folder)")
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def bos(self) -> bool:
        """Whether every calibration and evaluation window starts with the tokenizer's BOS token."""
        return bos_token(self.tokenizer) is not None

    @property
    def _h(self) -> Any:
        return self.hparams  # an AttributeDict of the init arguments

    @property
    def eval_names(self) -> list[str]:
        return list(self.evals)

    def calibration(self) -> tuple[Tensor, dict]:
        """All ``[nsamples, seqlen]`` calibration windows and how they were made (for the plan and the rows)."""
        if self._calib is None:
            h: Any = self.hparams
            corpus = load_corpus(h.calib, h.data_dir, default_split="train")
            windows = calibration_windows(corpus, self.tokenizer, h.nsamples, h.seqlen, seed=h.seed)
            info = {"dataset": f"{corpus.name}:{corpus.split}", "source": corpus.source, "seed": h.seed,
                    "bos": self.bos}  # fmt: skip
            self._calib = windows, info
        return self._calib

    def eval_set(self, name: str) -> tuple[Tensor, str]:
        """``[W, eval_seqlen]`` windows of one evaluation set and its source."""
        if name not in self._eval:
            h: Any = self.hparams
            corpus = load_corpus(name, h.data_dir)
            windows = eval_windows(corpus, self.tokenizer, h.eval_seqlen, h.max_windows, h.c4_windows, seed=h.seed)
            self._eval[name] = windows, corpus.source
        return self._eval[name]

    def _loader(self, windows: Tensor) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        data = TensorDataset(windows)
        sampler = UnrepeatedDistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)  # no padding
        return DataLoader(data, batch_size=self._h.batch_size, sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.eval_set(name)[0]) for name in self.evals]

    def train_dataloader(self) -> DataLoader:
        """The calibration windows, shuffled with the seed (e.g. for a short recovery fine-tune)."""
        windows, _ = self.calibration()
        gen = torch.Generator().manual_seed(self._h.seed)
        return DataLoader(TensorDataset(windows), batch_size=self._h.batch_size, shuffle=True, generator=gen)
