"""Calibration statistics of a projection's inputs: ``InputStats`` and the ``GramAccumulator`` hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from numprune.errors import NumpruneError
from numprune.linalg import block_bounds, gram_blocks, mirror_blocks_
from numprune.timing import stage

Reduce = Callable[[Tensor], Tensor]  # sums a tensor over processes (all-reduce); None: one process


@dataclass
class InputStats:
    """Statistics of the inputs of one projection: ``gram = X^T X / n`` and ``mean = 1^T X / n`` (float64).
    ``rows``: the Gram matrix holds only these rows, ``X[:, rows]^T X`` (what Eq. 11's refit reads)."""

    gram: Tensor
    mean: Tensor
    count: int
    rows: Tensor | None = None

    @property
    def variance(self) -> Tensor:
        """Per-channel input variance (FLAP's fluctuation)."""
        if self.rows is not None:
            raise NumpruneError("these statistics hold only some rows of the Gram matrix: no variance")
        return (self.gram.diagonal() - self.mean**2).clamp_min(0.0)

    def to(self, device: str | torch.device) -> InputStats:
        rows = None if self.rows is None else self.rows.to(device)
        return InputStats(self.gram.to(device), self.mean.to(device), self.count, rows)


def check_calibration(calibration: Tensor) -> Tensor:
    """The calibration token ids as int64 ``[nsamples, seqlen]``; a clear error otherwise."""
    if not isinstance(calibration, Tensor) or calibration.ndim != 2 or calibration.numel() == 0:
        raise NumpruneError("calibration must be a non-empty [nsamples, seqlen] tensor of token ids")
    if calibration.dtype not in (torch.int32, torch.int64):
        raise NumpruneError(f"calibration token ids must be integers, got {calibration.dtype}")
    return calibration.long()


class GramAccumulator:
    """Accumulates ``X^T X`` and ``1^T X`` of a projection's inputs (SparseGPT-style ``add_batch``).

    Each batch's product is computed in float32 (float64 inputs stay float64) and added into float64 sums:
    a batch is one sample (``seqlen`` tokens), so the float32 rounding of one product is ~1e-6 relative and
    the running sum over samples keeps float64 accuracy (tested against a float64 oracle). A float64 product
    costs 2x or more on CPUs and 32x or more on GPUs. On CUDA, bf16/fp16 activations use TF32 (exact for
    them, see ``linalg.gram_blocks``). ``rows``: accumulate only those rows, ``X[:, rows]^T X``.

    The product is symmetric in its ``rows x rows`` part, so only its upper block triangle is computed
    (``gram_blocks`` row blocks, ``numprune.linalg``; the lower one is mirrored once, in ``stats``): ~40% fewer
    multiply-adds at 4 blocks (``torch`` has no ``syrk``). The sums are kept with the columns ordered ``rows`` first.
    Batches are copied into a float32 buffer of ``buffer_tokens`` rows and multiplied when it is full (one
    product then sums up to ``max(buffer_tokens, batch)`` terms, as one 2048-token sample's does): fewer,
    larger products and fewer float64 additions (each costs ``rows x D`` memory traffic).
    """

    def __init__(
        self, name: str, rows: Tensor | None = None, gram_blocks: int | None = None, buffer_tokens: int = 2048
    ) -> None:
        self.name, self.count, self.rows, self.gram_blocks = name, 0, rows, gram_blocks
        self.xtx: Tensor | None = None  # [len(rows), D], columns in the order of ``self.order``
        self.xsum: Tensor | None = None
        self.order: Tensor | None = None  # column order of ``xtx``: rows, then the others (None: identity)
        self.bounds: list[int] = []  # the row blocks of the symmetric product
        self.buffer_tokens = buffer_tokens
        self.buffer: Tensor | None = None  # [buffer_tokens, D], the first ``filled`` rows not yet multiplied
        self.filled = 0
        self.tf32 = False

    def add_batch(self, x: Tensor) -> None:
        with stage("gram"):
            x = x.detach().reshape(-1, x.shape[-1])
            half = x.dtype in (torch.bfloat16, torch.float16)
            if x.dtype != torch.float64:
                x = x.to(torch.float32)
            if self.xtx is None or self.xsum is None:
                self._start(x)
            assert self.xtx is not None and self.xsum is not None
            self.xsum += x.sum(0, dtype=torch.float64)
            self.tf32 = half and x.is_cuda
            self.count += x.shape[0]
            if self.buffer is None or self.filled + x.shape[0] > self.buffer.shape[0]:
                self._flush()
            if self.buffer is None or x.shape[0] > self.buffer.shape[0]:
                self._multiply(x if self.order is None else x.index_select(1, self.order))
                return
            dst = self.buffer[self.filled : self.filled + x.shape[0]]
            if self.order is None:
                dst.copy_(x)
            else:  # columns rows-first, gathered straight into the buffer (x[:, order] is ~7x slower on CPU)
                torch.index_select(x, 1, self.order, out=dst)
            self.filled += x.shape[0]

    def _flush(self) -> None:
        if self.buffer is not None and self.filled:
            self._multiply(self.buffer[: self.filled])
        self.filled = 0

    def _multiply(self, x: Tensor) -> None:
        assert self.xtx is not None
        for (start, stop), product in gram_blocks(x, self.bounds, tf32=self.tf32):
            self.xtx[start:stop, start:] += product

    def _start(self, x: Tensor) -> None:
        d = x.shape[1]
        if self.rows is not None:
            rest = torch.ones(d, dtype=torch.bool)
            rest[self.rows.cpu()] = False
            self.order = torch.cat([self.rows.cpu(), rest.nonzero().squeeze(1)]).to(x.device)
        n = d if self.rows is None else len(self.rows)
        self.xtx = torch.zeros(n, d, dtype=torch.float64, device=x.device)
        self.xsum = torch.zeros(d, dtype=torch.float64, device=x.device)
        self.bounds = block_bounds(n, self.gram_blocks)
        if self.buffer_tokens > 0:
            self.buffer = torch.empty(self.buffer_tokens, d, dtype=x.dtype, device=x.device)

    def _mirror_(self) -> None:
        """Fill the lower block triangle of the ``rows x rows`` part from the upper one (idempotent)."""
        assert self.xtx is not None
        mirror_blocks_(self.xtx, self.bounds)

    def reduce_(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Sum the accumulated ``X^T X``, ``1^T X`` and count over processes (distributed calibration)."""
        if self.xtx is None or self.xsum is None:
            raise NumpruneError(f"no calibration inputs reached {self.name} on this process: give every rank samples")
        with stage("gram"):
            self._flush()
        self.xtx, self.xsum = reduce(self.xtx), reduce(self.xsum)
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.xtx.device)
        self.count = int(reduce(count).item())

    def stats(self) -> InputStats:
        if self.xtx is None or self.xsum is None or self.count == 0:
            raise NumpruneError(f"no calibration inputs reached {self.name}")
        with stage("gram"):
            self._flush()
        if not (torch.isfinite(self.xsum).all() and torch.isfinite(self.xtx.diagonal()).all()):
            raise NumpruneError(f"non-finite activations at the input of {self.name}; check the model and dtype")
        self._mirror_()
        if self.order is None:
            gram = self.xtx / self.count
        else:
            gram = self.xtx.index_select(1, self.order.argsort()).div_(self.count)
        return InputStats(gram, self.xsum / self.count, self.count, self.rows)


@contextmanager
def record_inputs(
    modules: Mapping[str, nn.Module | None], prefix: str = "", buffer_tokens: int = 2048
) -> Iterator[dict[str, GramAccumulator]]:
    """Attach accumulators to the inputs of the named modules for the duration of the block (``buffer_tokens``:
    see ``GramAccumulator``; 0 where many accumulators live at once)."""
    accs: dict[str, GramAccumulator] = {}
    handles = []
    for name, module in modules.items():
        if module is None:
            continue
        acc = accs[name] = GramAccumulator(f"{prefix}{name}", buffer_tokens=buffer_tokens)
        handles.append(module.register_forward_pre_hook(lambda _m, args, acc=acc: acc.add_batch(args[0])))
    try:
        yield accs
    finally:
        for h in handles:
            h.remove()
