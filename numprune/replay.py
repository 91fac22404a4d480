"""Replaying an attention block from its recorded output-projection inputs (the sequential repair's second
forward through a layer whose attention changed only in ``o_proj``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


@contextmanager
def replaced_forward(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """Run ``forward`` instead of ``module``'s own for the duration of the block (an instance attribute)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


def parent(root: nn.Module, child: nn.Module) -> nn.Module | None:
    """The module of ``root``'s tree that holds ``child`` as a direct submodule."""
    return next((m for m in root.modules() if any(c is child for c in m.children())), None)


class Replay:
    """The attention block's forward for sample ``k`` as its (repaired) output projection of the recorded
    input ``inputs[k]``: ``one(k)`` stands in for the block's forward (same return arity, extra outputs None)."""

    def __init__(
        self, attention: nn.Module, o_proj: nn.Linear, inputs: list[Tensor], cols: Tensor, device: torch.device
    ) -> None:
        self.attention, self.o_proj, self.inputs, self.cols, self.device = attention, o_proj, inputs, cols, device
        self.arity = 0  # 0: the block returns a tensor; n: a tuple of n whose first item is the output

    def one(self, k: int) -> Callable[..., Any]:
        def forward(*_args: Any, **_kwargs: Any) -> Any:
            x, w = self.inputs[k].to(self.device), self.o_proj.weight
            if w.shape[1] != len(self.cols):  # masked: the weight kept its width
                w = w[:, self.cols]
            y = torch.nn.functional.linear(x.index_select(-1, self.cols), w, self.o_proj.bias)
            return (y, *([None] * (self.arity - 1))) if self.arity else y

        return forward

    def holds(self, run: Callable[[], Tensor]) -> bool:
        """Whether replaying sample 0 gives the layer output of a real forward ``run()`` of it (and learn the
        block's return arity from that forward)."""
        seen: list[Any] = []
        handle = self.attention.register_forward_hook(lambda _m, _a, out: seen.append(out))
        try:
            full = run()
        finally:
            handle.remove()
        self.arity = len(seen[0]) if isinstance(seen[0], tuple) else 0
        with replaced_forward(self.attention, self.one(0)):
            replayed = run()
        tol = 1e-4 if full.dtype in (torch.float32, torch.float64) else 2e-2
        return bool(torch.allclose(replayed, full, rtol=tol, atol=tol * float(full.abs().max())))
