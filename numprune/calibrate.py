"""Calibration statistics and the one layer-by-layer pass that computes them.

``LayerwiseRunner`` captures the inputs of the first decoder layer, then moves one layer at a time onto the
compute device, so peak device memory is about one layer plus the calibration activations. Both the dense
scoring pass and the sequential compensation pass use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from numprune.adapters import Adapter
from numprune.errors import NumpruneError

Reduce = Callable[[Tensor], Tensor]  # sums a tensor over processes (all-reduce); None: one process


@dataclass
class InputStats:
    """Statistics of the inputs of one projection: ``gram = X^T X / n`` and ``mean = 1^T X / n`` (float64)."""

    gram: Tensor
    mean: Tensor
    count: int

    @property
    def variance(self) -> Tensor:
        """Per-channel input variance (FLAP's fluctuation)."""
        return (self.gram.diagonal() - self.mean**2).clamp_min(0.0)

    def to(self, device: str | torch.device) -> InputStats:
        return InputStats(self.gram.to(device), self.mean.to(device), self.count)


def check_calibration(calibration: Tensor) -> Tensor:
    """The calibration token ids as int64 ``[nsamples, seqlen]``; a clear error otherwise."""
    if not isinstance(calibration, Tensor) or calibration.ndim != 2 or calibration.numel() == 0:
        raise NumpruneError("calibration must be a non-empty [nsamples, seqlen] tensor of token ids")
    if calibration.dtype not in (torch.int32, torch.int64):
        raise NumpruneError(f"calibration token ids must be integers, got {calibration.dtype}")
    return calibration.long()


class GramAccumulator:
    """Accumulates ``X^T X`` and ``1^T X`` of a projection's inputs in float64 (SparseGPT-style ``add_batch``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.xtx: Tensor | None = None
        self.xsum: Tensor | None = None
        self.count = 0

    def add_batch(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        if not torch.isfinite(x).all():
            raise NumpruneError(f"non-finite activations at the input of {self.name}; check the model and dtype")
        x = x.to(torch.float64)
        if self.xtx is None:
            self.xtx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self.xsum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        assert self.xsum is not None
        self.xtx.addmm_(x.T, x)
        self.xsum += x.sum(0)
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
        return InputStats(self.xtx / self.count, self.xsum / self.count, self.count)


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


class _Captured(Exception):
    """Raised inside the first decoder layer once its inputs are recorded (private: only caught here)."""


class _KwargsRecorder(nn.Module):
    """Stands in for decoder layer ``index`` for one forward: records the keyword arguments the model passes it
    and returns its input unchanged; the last one stops the forward before the head."""

    def __init__(self, index: int, store: list[dict], last: bool) -> None:
        super().__init__()
        self.index, self.store, self.last = index, store, last

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.store[self.index] = kwargs
        if self.last:
            raise _Captured
        return hidden_states


class LayerwiseRunner:
    """Holds the current hidden states of every calibration sample and walks the decoder layers."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        samples: Tensor,
        device: torch.device,
        progress: bool = True,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """``reduce``: sums a tensor over processes; each process then holds its own shard of ``samples`` and
        ``collect`` returns the statistics of all shards together (the hidden states stay per process)."""
        self.model, self.adapter, self.device, self.progress = model, adapter, torch.device(device), progress
        self.reduce = reduce
        self.position = 0  # the layer the samples are at (``walk`` moves it)
        self.hidden, self.layer_kwargs = self._capture(samples)

    @torch.no_grad()
    def _capture(self, samples: Tensor) -> tuple[list[Tensor], list[dict]]:
        """Inputs of the first decoder layer for every sample, and the keyword arguments of every layer (the same
        for every sample of one length). They differ between layers where the model has layer types: Gemma 3's
        sliding and global layers get other RoPE tables and masks, Qwen2's sliding layers other masks."""
        layers = self.adapter.layers(self.model)
        moved = self._non_layer_tensors(layers)
        homes = [t.device for t in moved]
        for t in moved:  # embeddings, rotary tables, ... go to the device; the layers stay where they are
            t.data = t.data.to(self.device)
        hidden: list[Tensor] = []
        kwargs: list[dict] = [{} for _ in layers]

        def grab(_m: nn.Module, args: tuple, kw: dict) -> None:
            hidden.append((args[0] if args else kw["hidden_states"]).detach())
            raise _Captured

        originals = list(layers)
        handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            for row in samples:
                try:
                    self.adapter.run_model(self.model, row[None].to(self.device))
                except _Captured:
                    pass
            handle.remove()
            for i in range(len(layers)):  # one pass of the first sample through stand-ins: every layer's kwargs
                layers[i] = _KwargsRecorder(i, kwargs, last=i == len(layers) - 1)
            try:
                self.adapter.run_model(self.model, samples[:1].to(self.device))
            except _Captured:
                pass
        finally:
            handle.remove()
            for i, layer in enumerate(originals):
                layers[i] = layer
            for t, home in zip(moved, homes):
                t.data = t.data.to(home)
        return hidden, kwargs

    def _non_layer_tensors(self, layers: nn.ModuleList) -> list[Tensor]:
        in_layers = {id(t) for t in [*layers.parameters(), *layers.buffers()]}
        return [t for t in [*self.model.parameters(), *self.model.buffers()] if id(t) not in in_layers]

    @torch.no_grad()
    def forward(self, layer: nn.Module, index: int | None = None) -> list[Tensor]:
        """Run one layer (already on the device; decoder layer ``index``, default: where the samples are) over
        every sample; returns the outputs."""
        kwargs = self.layer_kwargs[self.position if index is None else index]
        return [self.adapter.layer_output(layer(h, **kwargs)) for h in self.hidden]

    @torch.no_grad()
    def walk(self, visit: Callable[[int, nn.Module], list[Tensor] | None], desc: str) -> None:
        """For each layer: move it to the device and call ``visit(i, layer)``, which may collect statistics or
        modify the layer. The samples then move on through the layer: ``visit``'s return value when it gives
        the outputs (saves a forward), else a forward through the layer as it is after the visit."""
        layers = self.adapter.layers(self.model)
        for i, layer in enumerate(tqdm(layers, desc=desc, disable=not self.progress, leave=False)):
            home = next(layer.parameters()).device
            self.position = i
            layer.to(self.device)
            out = visit(i, layer)
            self.hidden = self.forward(layer) if out is None else out
            layer.to(home)

    def collect(
        self, layer: nn.Module, index: int, names: tuple[str, ...] = ("o_proj", "down_proj")
    ) -> tuple[dict[str, InputStats], list[Tensor]]:
        """Input statistics of the layer's output projections over all samples, and the layer's outputs."""
        o_proj, down_proj = self.adapter.out_projections(layer)
        modules = {"o_proj": o_proj, "down_proj": down_proj}
        with record_inputs({n: modules[n] for n in names}, prefix=f"layer {index} ") as accs:
            out = self.forward(layer, index)
            if self.reduce is not None:
                for acc in accs.values():
                    acc.reduce_(self.reduce)
        for h in out:
            if not torch.isfinite(h).all():
                raise NumpruneError(f"non-finite activations at the output of layer {index}")
        return {name: acc.stats() for name, acc in accs.items()}, out
