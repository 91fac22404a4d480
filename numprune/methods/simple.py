"""Floors and simple baselines: Wanda-sp (FLAP paper's structured Wanda), magnitude, random.

All three allocate uniformly per layer and repair by slicing (no weight update, no bias).
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
    repair_kind = "slice"


def wanda_sp_scores(stats: InputStats, weight: Tensor) -> Tensor:
    """Structured Wanda per input channel: ``mean_i |W_ij| * ||X_j||`` (``||X_j||^2`` = ``gram[j, j]``)."""
    w = weight.to(device=stats.gram.device, dtype=torch.float64)
    return w.abs().mean(dim=0) * stats.gram.diagonal().clamp_min(0).sqrt()


class WandaSP(_Slice):
    """Wanda-sp as the FLAP paper defines it: a head sums its channels' scores; uniform per-layer ratio."""

    name = "wanda-sp"

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


class Magnitude(_Slice):
    """L2 norm of all the weights a head / channel owns (data-free floor)."""

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
