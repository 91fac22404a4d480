"""LLM-Pruner without LoRA (Ma et al., NeurIPS 2023) as its official command runs (horseee/LLM-Pruner
``hf_prune.py --block_wise --pruner_type taylor``, README: layers 4-30 of LLaMA-7B's 32): first-order Taylor
importance of coupled groups.

A backward pass of the language-model loss on 10 calibration samples of 64 tokens (``--num_examples 10``,
``get_examples(..., seq_len=64)``; we take the first 64 tokens of the first 10 calibration windows: bookcorpus is
not available offline) gives ``g = dL/dW`` for every weight. A group's importance sums (``--grouping_strategy
sum``) over the weights it couples (a query head: its q rows, its ``o_proj`` columns and ``1/G`` of its KV head's
k / v rows; an MLP channel: its gate / up rows and its ``down_proj`` column):

- ``e1`` (element-wise, ``--taylor param_first``, the official default): ``sum_k |g_k w_k|``;
- ``v`` (vector-wise, ``vectorize``): per coupled row/column vector ``|sum_k g_k w_k|``, summed over the vectors.

Allocation is uniform per layer with whole heads floored (the metapruner prunes ``n // head_dim`` heads); the
official range, layers [4, 30) of 32, is scaled to the model's depth (``round(4 L / 32)`` to
``L - round(2 L / 32)``: [4, 28) of SmolLM2's 30), and the pruned layers prune ``ratio * L / n_pruned`` so that
the model-level parameter ratio stays ``ratio`` (the official 0.25 on 26 of 32 layers is ~20%).
``llm-pruner-all`` prunes every layer. No weight update (the LoRA recovery is out of scope).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from numprune.adapters.base import Adapter, LayerGeometry, per_query_head, projections
from numprune.config import PruneConfig
from numprune.errors import NumpruneError
from numprune.methods.base import LayerScores
from numprune.methods.simple import _Slice

TAYLOR_SAMPLES = 10  # --num_examples
TAYLOR_SEQLEN = 64  # get_examples(..., seq_len=64)


def loss_gradients(model: nn.Module, adapter: Adapter, samples: Tensor) -> None:
    """Accumulate ``dL/dW`` of the next-token loss of every sample into ``param.grad`` (summed over samples)."""
    device = next(model.parameters()).device
    with torch.enable_grad():
        for row in samples:
            ids = row[None].to(device)
            out = adapter.run_model(model, ids)
            logits = getattr(out, "logits", out)  # HF output object, or the logits themselves (LlamaGen)
            loss = nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
            loss.backward()


def _importance(weight: Tensor, dim: int, mode: str) -> Tensor:
    """Per row (``dim=1``) or per column (``dim=0``) importance of one weight from its ``.grad``."""
    if weight.grad is None:
        raise ValueError("no gradient: run the Taylor pass (taylor_pass) before scoring")
    prod = (weight.detach().double() * weight.grad.double()).cpu()
    return prod.abs().sum(dim) if mode == "e1" else prod.sum(dim).abs()


def taylor_scores(adapter: Adapter, layer: nn.Module, geo: LayerGeometry, mode: str) -> LayerScores:
    """Group importances of one layer from the gradients already in ``.grad``."""
    o_proj, down_proj = projections(adapter, layer)
    heads = torch.zeros(geo.num_heads, dtype=torch.float64)
    for lin, part in adapter.attn_in(layer):
        heads += per_query_head(_importance(lin.weight, 1, mode), part, geo)
    heads += _importance(o_proj.weight, 0, mode).reshape(geo.num_heads, geo.head_dim).sum(1)
    channels = _importance(down_proj.weight, 0, mode)
    for lin in adapter.mlp_in(layer):
        channels += _importance(lin.weight, 1, mode)
    return LayerScores(heads=heads, channels=channels)


class LLMPruner(_Slice):
    name = "llm-pruner"
    scoring = "model"

    def __init__(
        self,
        mode: Literal["e1", "v"] = "e1",
        layer_range: bool = True,
        samples: int = TAYLOR_SAMPLES,
        seqlen: int = TAYLOR_SEQLEN,
    ):
        if mode not in ("e1", "v"):
            raise ValueError(f"mode must be 'e1' or 'v', got {mode!r}")
        self.mode, self.layer_range, self.samples, self.seqlen = mode, layer_range, samples, seqlen

    def settings(self) -> dict[str, object]:
        return {
            "taylor": self.mode,
            "layer_range": "[4, 30) of 32, scaled" if self.layer_range else "all",
            "taylor_samples": self.samples,
            "taylor_seqlen": self.seqlen,
        }

    def score_model(
        self, model: nn.Module, adapter: Adapter, calibration: Tensor, cfg: PruneConfig
    ) -> list[LayerScores]:
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        try:
            loss_gradients(model, adapter, calibration[: self.samples, : self.seqlen])
            layers = adapter.layers(model)
            return [taylor_scores(adapter, layer, adapter.geometry(layer), self.mode) for layer in layers]
        finally:
            for p, flag in zip(params, flags):
                p.grad = None
                p.requires_grad_(flag)

    def layer_ratios(self, ratio: float, num_layers: int) -> list[float] | None:
        if not self.layer_range:
            return None
        start, end = pruned_layers(num_layers)
        inner = ratio * num_layers / (end - start)
        if inner >= 1:
            raise NumpruneError(f"ratio {ratio} needs {inner:.2f} of layers [{start}, {end}); use llm-pruner-all")
        return [inner if start <= i < end else 0.0 for i in range(num_layers)]


def pruned_layers(num_layers: int) -> tuple[int, int]:
    """LLM-Pruner's LLaMA-7B range, layers [4, 30) of 32, scaled to ``num_layers`` (``[start, end)``)."""
    return round(4 * num_layers / 32), num_layers - round(2 * num_layers / 32)
