"""Floors and simple baselines: Wanda-sp and mag-sp (as FLAP's official code runs them), magnitude, random.

All allocate uniformly per layer, ``int(ratio * n)`` attention units and channels per layer as FLAP's
``prune_wanda_sp`` / ``prune_magnitude_sp`` do (``rounding="floor"``; the MLP then takes the parameters the
attention floor left, so that every method removes the same parameters), and repair by slicing (no weight
update, no bias).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from numprune.adapters.base import Adapter, LayerGeometry, per_query_head, projections
from numprune.calibrate import InputStats
from numprune.config import PruneConfig
from numprune.methods.base import LayerScores, Method


class _Slice(Method):
    """Methods without compensation: per-layer allocation, the kept columns stay as they are."""

    default_allocation = "uniform"
    default_rounding = "floor"
    repair_kind = "slice"


def wanda_sp_scores(stats: InputStats, weight: Tensor) -> Tensor:
    """Structured Wanda per input channel: ``mean_i |W_ij| * ||X_j||`` (``||X_j||^2`` = ``gram[j, j]``)."""
    w = weight.to(device=stats.gram.device, dtype=torch.float64)
    return w.abs().mean(dim=0) * stats.gram.diagonal().clamp_min(0).sqrt()


class WandaSP(_Slice):
    """Wanda-sp as FLAP's official ``prune_wanda_sp``: a head sums its channels' scores; uniform per-layer ratio;
    sequential: each layer is scored on the inputs through the already pruned layers before it (both modules
    from one forward of the layer, as the official code), then pruned and re-run to feed the next layer."""

    name = "wanda-sp"
    scoring = "sequential"

    def score(
        self, stats: dict[str, InputStats], o_weight: Tensor, down_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig
    ) -> LayerScores:
        heads = wanda_sp_scores(stats["o_proj"], o_weight).reshape(geo.num_heads, geo.head_dim).sum(dim=1)
        return LayerScores(heads=heads, channels=wanda_sp_scores(stats["down_proj"], down_weight))


def coupled_sq_norms(adapter: Adapter, layer: nn.Module, geo: LayerGeometry) -> tuple[Tensor, Tensor]:
    """Squared L2 norm of every weight a query head / an MLP channel owns (``[H]``, ``[I]``, float64).

    A head owns its q rows and ``o_proj`` columns, and ``1/G`` of its KV head's k and v rows (shared by G heads);
    a channel owns its gate and up rows and its ``down_proj`` column.
    """
    o_proj, down_proj = projections(adapter, layer)
    heads = torch.zeros(geo.num_heads, dtype=torch.float64)
    for lin, part in adapter.attn_in(layer):
        heads += per_query_head(lin.weight.detach().double().pow(2).sum(1).cpu(), part, geo)
    heads += o_proj.weight.detach().double().pow(2).sum(0).cpu().reshape(geo.num_heads, -1).sum(1)
    channels = down_proj.weight.detach().double().pow(2).sum(0).cpu()
    for lin in adapter.mlp_in(layer):
        channels += lin.weight.detach().double().pow(2).sum(1).cpu()
    return heads, channels


class MagSP(_Slice):
    """mag-sp as FLAP's official ``prune_magnitude_sp``: the L2 norms of the output projection's input columns
    (``o_proj`` for heads, summed over a head's ``D_h`` columns; ``down_proj`` for channels), nothing else.
    Data-free. Not ``magnitude``, which counts every weight a head or channel owns."""

    name = "mag-sp"
    scoring = "model"

    def score_model(
        self, model: nn.Module, adapter: Adapter, calibration: Tensor, cfg: PruneConfig
    ) -> list[LayerScores]:
        out = []
        for layer in adapter.layers(model):
            geo = adapter.geometry(layer)
            o_proj, down_proj = projections(adapter, layer)
            heads = column_norms(o_proj.weight).reshape(geo.num_heads, geo.head_dim).sum(dim=1)
            out.append(LayerScores(heads=heads, channels=column_norms(down_proj.weight)))
        return out


def column_norms(weight: Tensor) -> Tensor:
    """L2 norm of every input column of an ``[out, in]`` weight (float64, on the CPU)."""
    return weight.detach().double().cpu().norm(dim=0)


class Magnitude(_Slice):
    """L2 norm of all the weights a head / channel owns (q/k/v rows and o_proj columns; gate/up rows and the
    down_proj column): our data-free floor, not FLAP's mag-sp (``mag-sp``)."""

    name = "magnitude"
    scoring = "model"

    def score_model(
        self, model: nn.Module, adapter: Adapter, calibration: Tensor, cfg: PruneConfig
    ) -> list[LayerScores]:
        out = []
        for layer in adapter.layers(model):
            heads, channels = coupled_sq_norms(adapter, layer, adapter.geometry(layer))
            out.append(LayerScores(heads=heads.sqrt(), channels=channels.sqrt()))
        return out


class Random(_Slice):
    """Uniformly random scores from ``torch.Generator().manual_seed(cfg.seed)`` (floor; deterministic)."""

    name = "random"
    scoring = "model"

    def score_model(
        self, model: nn.Module, adapter: Adapter, calibration: Tensor, cfg: PruneConfig
    ) -> list[LayerScores]:
        gen = torch.Generator().manual_seed(cfg.seed)
        out = []
        for layer in adapter.layers(model):
            geo = adapter.geometry(layer)
            out.append(
                LayerScores(
                    heads=torch.rand(geo.num_heads, generator=gen, dtype=torch.float64),
                    channels=torch.rand(geo.intermediate, generator=gen, dtype=torch.float64),
                )
            )
        return out
