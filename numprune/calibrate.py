"""Calibration statistics and the one layer-by-layer pass that computes them.

``LayerwiseRunner`` captures the inputs of the first decoder layer, then moves one layer at a time onto the
compute device, so peak device memory is about one layer plus the calibration activations. Both the dense
scoring pass and the sequential compensation pass use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from numprune.adapters import Adapter, LayerGeometry
from numprune.adapters.base import head_columns
from numprune.errors import NumpruneError
from numprune.replay import Replay, parent, replaced_forward
from numprune.stats import GramAccumulator, InputStats, Reduce, check_calibration, record_inputs
from numprune.timing import stage

__all__ = ["GramAccumulator", "InputStats", "LayerwiseRunner", "Reduce", "check_calibration", "record_inputs"]


class _Captured(Exception):
    """Raised inside a layer once the inputs it was run for are recorded (private: only caught here)."""


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
    """Holds the current hidden states of every calibration sample and walks the decoder layers.

    The hidden states live on the compute device, or in CPU memory with ``offload=True`` (each sample then
    moves to the device for its forward: device memory is one layer plus one sample's activations plus the
    statistics). ``stage_name`` is the timing stage that layer forwards are charged to (``numprune.timing``).
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        samples: Tensor,
        device: torch.device,
        progress: bool = True,
        reduce: Callable[[Tensor], Tensor] | None = None,
        offload: bool = False,
        stage_name: str = "forward",
    ) -> None:
        """``reduce``: sums a tensor over processes; each process then holds its own shard of ``samples`` and
        ``collect`` returns the statistics of all shards together (the hidden states stay per process)."""
        self.model, self.adapter, self.device, self.progress = model, adapter, torch.device(device), progress
        self.reduce, self.stage_name = reduce, stage_name
        self.store = torch.device("cpu") if offload else self.device
        self.bypass_ok: bool | None = None  # see collect_bypassed
        self.replay_ok: bool | None = None  # see attention_replay
        self.replay_arity = 0
        self.position = 0  # the layer the samples are at (``walk`` moves it)
        with stage("capture"):
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
            hidden.append((args[0] if args else kw["hidden_states"]).detach().to(self.store))
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

    def _run(self, layer: nn.Module, h: Tensor, index: int | None = None) -> Tensor:
        kwargs = self.layer_kwargs[self.position if index is None else index]
        return self.adapter.layer_output(layer(h.to(self.device), **kwargs))

    @torch.no_grad()
    def forward(self, layer: nn.Module, index: int | None = None) -> list[Tensor]:
        """Run one layer (already on the device; decoder layer ``index``, default: where the samples are) over
        every sample; returns the outputs."""
        with stage(self.stage_name):
            return [self._run(layer, h, index).to(self.store) for h in self.hidden]

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

    def _projections(self, layer: nn.Module) -> dict[str, nn.Linear | None]:
        return dict(zip(("o_proj", "down_proj"), self.adapter.out_projections(layer)))

    def _projection(self, layer: nn.Module, index: int, name: str) -> nn.Linear:
        module = self._projections(layer)[name]
        if module is None:
            raise NumpruneError(f"layer {index} has no {name} left (its block was cut to nothing)")
        return module

    def _stats(self, accs: dict[str, GramAccumulator]) -> dict[str, InputStats]:
        if self.reduce is not None:
            for acc in accs.values():
                acc.reduce_(self.reduce)
        return {name: acc.stats() for name, acc in accs.items()}

    def collect(
        self, layer: nn.Module, index: int, names: tuple[str, ...] = ("o_proj", "down_proj")
    ) -> tuple[dict[str, InputStats], list[Tensor]]:
        """Input statistics of the layer's output projections over all samples, and the layer's outputs."""
        modules = self._projections(layer)
        with record_inputs({n: modules[n] for n in names}, prefix=f"layer {index} ") as accs:
            out = self.forward(layer, index)
        for h in out:
            if not torch.isfinite(h).all():
                raise NumpruneError(f"non-finite activations at the output of layer {index}")
        return self._stats(accs), out

    @torch.no_grad()
    def collect_until(
        self, layer: nn.Module, index: int, name: str, keep_inputs: bool = False
    ) -> tuple[dict[str, InputStats], list[Tensor] | None]:
        """Input statistics of one output projection; each sample's forward stops at that projection (the
        rest of the layer is not run). ``keep_inputs``: also return the projection's input of every sample (in
        the runner's store), which ``collect_bypassed`` can replay instead of running the attention again."""
        module = self._projection(layer, index, name)
        acc = GramAccumulator(f"layer {index} {name}")
        inputs: list[Tensor] = []

        def record_and_stop(x: Tensor) -> Tensor:
            acc.add_batch(x)
            if keep_inputs:
                inputs.append(x.to(self.store))
            raise _Captured

        with stage(self.stage_name), replaced_forward(module, record_and_stop):
            for h in self.hidden:
                try:
                    self._run(layer, h, index)
                except _Captured:
                    pass
        return self._stats({name: acc}), inputs if keep_inputs else None

    def attention_replay(
        self, layer: nn.Module, index: int, inputs: list[Tensor], geo: LayerGeometry, heads: list[int]
    ) -> Replay | None:
        """A replay of layer ``index``'s attention after its ``o_proj`` was repaired and cut to the columns of
        the kept query ``heads``: per sample, the new ``o_proj`` of the recorded dense ``o_proj`` inputs (the attention
        before ``o_proj`` does not change when only ``o_proj`` does). Checked once per runner on one sample
        against a real forward; None where it does not hold, or the attention was cut to nothing."""
        o_proj = self.adapter.out_projections(layer)[0]
        attention = parent(layer, o_proj) if o_proj is not None else None
        cols = head_columns(geo, torch.tensor(heads, dtype=torch.long))
        if o_proj is None or attention is None or not len(cols):
            return None
        replay = Replay(attention, o_proj, inputs, cols.to(self.device), self.device)
        if self.replay_ok is None:
            with torch.no_grad():
                self.replay_ok = replay.holds(lambda: self._run(layer, self.hidden[0], index))
            self.replay_arity = replay.arity
        replay.arity = self.replay_arity
        return replay if self.replay_ok else None

    @torch.no_grad()
    def collect_bypassed(
        self,
        layer: nn.Module,
        index: int,
        name: str,
        keep: Tensor,
        replay: Replay | None = None,
        kept_rows: bool = False,
    ) -> tuple[dict[str, InputStats], tuple[list[Tensor], list[Tensor]] | None]:
        """Input statistics of one output projection over all samples, run with the projection bypassed (it
        outputs zeros), and per sample the layer output without the projection's term plus the projection's
        input columns ``keep``: ``complete`` then adds the repaired projection's term, which saves a second
        forward through the layer. The identity ``output = bypassed output + projection(input)`` is checked
        once per runner on one sample; where it does not hold the partial outputs are None (run a forward).
        ``replay`` (``attention_replay``): the attention's output is replayed, not computed again. ``kept_rows``:
        the Gram matrix holds only the rows ``keep`` (``InputStats.rows``)."""
        module = self._projection(layer, index, name)
        keep = keep.to(self.device)
        acc = GramAccumulator(f"layer {index} {name}", rows=keep if kept_rows else None)
        kept: list[Tensor] = []

        def record_and_bypass(x: Tensor) -> Tensor:
            acc.add_batch(x)
            kept.append(x.index_select(-1, keep).to(self.store))
            return x.new_zeros(*x.shape[:-1], module.out_features)

        if self.bypass_ok is None:
            self.bypass_ok = self._bypass_identity(layer, module, index)
        if not self.bypass_ok:
            stats, _ = self.collect(layer, index, names=(name,))
            return stats, None
        with stage(self.stage_name), replaced_forward(module, record_and_bypass):
            partial = []
            for k, h in enumerate(self.hidden):
                if replay is None:
                    partial.append(self._run(layer, h, index).to(self.store))
                    continue
                with replaced_forward(replay.attention, replay.one(k)):
                    partial.append(self._run(layer, h, index).to(self.store))
        if replay is not None:
            replay.inputs.clear()  # freed before the MLP's solve
        return self._stats({name: acc}), (partial, kept)

    @torch.no_grad()
    def _bypass_identity(self, layer: nn.Module, module: nn.Module, index: int | None = None) -> bool:
        """Whether, on the first sample, the layer output is its output with ``module`` bypassed plus
        ``module``'s output (true for a projection that writes into the residual stream)."""
        x_in: list[Tensor] = []
        full = self._run(layer, self.hidden[0], index)
        own = module.forward

        def zero(x: Tensor) -> Tensor:
            x_in.append(x)
            return torch.zeros_like(own(x))

        with replaced_forward(module, zero):
            partial = self._run(layer, self.hidden[0], index)
        rebuilt = partial + module(x_in[0])
        tol = 1e-4 if full.dtype in (torch.float32, torch.float64) else 2e-2
        return bool(torch.allclose(rebuilt, full, rtol=tol, atol=tol * float(full.abs().max())))

    @torch.no_grad()
    def complete(
        self, layer: nn.Module, partial: tuple[list[Tensor], list[Tensor]], keep: Tensor, masked: bool
    ) -> list[Tensor] | None:
        """Outputs of the layer after its bypassed ``down_proj`` was repaired and cut to ``keep``: the bypassed
        outputs plus the new projection of the kept input columns (``masked``: the weight kept its width, the
        columns are picked). None when the MLP was cut to nothing (run a forward through the layer)."""
        module = self.adapter.out_projections(layer)[1]
        if module is None or not len(keep):
            return None
        weight = module.weight[:, keep.to(module.weight.device)] if masked else module.weight
        with stage(self.stage_name):
            out = []
            for p, x in zip(*partial):
                y = p.to(self.device) + torch.nn.functional.linear(x.to(self.device), weight, module.bias)
                out.append(y.to(self.store))
        return out
