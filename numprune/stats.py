"""Calibration statistics of a projection's inputs: ``InputStats`` and the ``GramAccumulator`` hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from numprune.errors import NumpruneError
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
    them, see ``_gram_product``). ``rows``: accumulate only those rows, ``X[:, rows]^T X``.
    """

    def __init__(self, name: str, rows: Tensor | None = None) -> None:
        self.name, self.count, self.rows = name, 0, rows
        self.xtx: Tensor | None = None
        self.xsum: Tensor | None = None

    def add_batch(self, x: Tensor) -> None:
        with stage("gram"):
            x = x.detach().reshape(-1, x.shape[-1])
            half = x.dtype in (torch.bfloat16, torch.float16)
            if x.dtype != torch.float64:
                x = x.to(torch.float32)
            rows = None if self.rows is None else self.rows.to(x.device)
            if self.xtx is None or self.xsum is None:
                n = x.shape[1] if rows is None else len(rows)
                self.xtx = torch.zeros(n, x.shape[1], dtype=torch.float64, device=x.device)
                self.xsum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.xtx += _gram_product(x, tf32=half and x.is_cuda, rows=rows)
            self.xsum += x.sum(0, dtype=torch.float64)
            self.count += x.shape[0]

    def reduce_(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Sum the accumulated ``X^T X``, ``1^T X`` and count over processes (distributed calibration)."""
        if self.xtx is None or self.xsum is None:
            raise NumpruneError(f"no calibration inputs reached {self.name} on this process: give every rank samples")
        self.xtx, self.xsum = reduce(self.xtx), reduce(self.xsum)
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.xtx.device)
        self.count = int(reduce(count).item())

    def stats(self) -> InputStats:
        if self.xtx is None or self.xsum is None or self.count == 0:
            raise NumpruneError(f"no calibration inputs reached {self.name}")
        if not (torch.isfinite(self.xsum).all() and torch.isfinite(self.xtx.diagonal()).all()):
            raise NumpruneError(f"non-finite activations at the input of {self.name}; check the model and dtype")
        return InputStats(self.xtx / self.count, self.xsum / self.count, self.count, self.rows)


def _gram_product(x: Tensor, tf32: bool, rows: Tensor | None = None) -> Tensor:
    """``x^T x`` (``rows``: ``x[:, rows]^T x``) in float32. ``tf32``: on CUDA, inputs that were bf16/fp16 are
    exactly representable in TF32 (10 mantissa bits), so the TF32 tensor cores give the float32 result of exact
    products, ~8x faster."""
    left = x if rows is None else x[:, rows]
    if not tf32:
        return left.T @ x
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return left.T @ x
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@contextmanager
def record_inputs(modules: Mapping[str, nn.Module | None], prefix: str = "") -> Iterator[dict[str, GramAccumulator]]:
    """Attach accumulators to the inputs of the named modules for the duration of the block."""
    accs: dict[str, GramAccumulator] = {}
    handles = []
    for name, module in modules.items():
        if module is None:
            continue
        acc = accs[name] = GramAccumulator(f"{prefix}{name}")
        handles.append(module.register_forward_pre_hook(lambda _m, args, acc=acc: acc.add_batch(args[0])))
    try:
        yield accs
    finally:
        for h in handles:
            h.remove()
