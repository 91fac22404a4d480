"""FLAP (An et al., AAAI 2024): fluctuation metric, per-layer standardisation, adaptive global structure, and
bias compensation.

Fluctuation of input channel ``j`` of ``o_proj`` / ``down_proj``: ``var(X_j) * ||W[:, j]||^2`` (FLAP's WIFV);
a head sums its ``D_h`` channels. Scores are standardised per layer and per module (zero mean, unit standard
deviation over the heads, resp. the channels, of that layer), then all layers' heads and channels are ranked
in one list *without* a head scaling (FLAP counts a head's parameters only in the threshold: our
``head_scaling="none"`` with ``ratio_of="params"``). Repair: no weight update; the pruned columns' mean
contribution becomes a bias, ``b = W[:, P] @ E[X_P]``, so the output mean on the calibration data is unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from numprune.adapters.base import LayerGeometry
from numprune.calibrate import InputStats
from numprune.config import PruneConfig
from numprune.methods.base import LayerScores, Method


def fluctuation(stats: InputStats, weight: Tensor) -> Tensor:
    """``var(X_j) * ||weight[:, j]||^2`` per input channel (float64, ``[in]``)."""
    w = weight.to(device=stats.gram.device, dtype=torch.float64)
    return stats.variance * (w**2).sum(dim=0)


def standardise(x: Tensor) -> Tensor:
    """``(x - mean) / std`` over one layer's units (a constant vector maps to zeros)."""
    std = x.std() if x.numel() > 1 else x.new_tensor(0.0)
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def bias_compensation(stats: InputStats, weight: Tensor, keep: Tensor) -> Tensor:
    """``W[:, P] @ mean(X_P)``: the mean output of the pruned columns, added back as a bias."""
    pruned = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    pruned[keep.to(weight.device)] = False
    mean = stats.mean.to(device=weight.device, dtype=torch.float64)
    return (weight.to(torch.float64)[:, pruned] @ mean[pruned]).to(weight.dtype)


class Flap(Method):
    name = "flap"
    default_allocation = "global"
    default_head_scaling = "none"
    repair_kind = "bias"

    def score(
        self, stats: dict[str, InputStats], o_weight: Tensor, down_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig
    ) -> LayerScores:
        heads = fluctuation(stats["o_proj"], o_weight).reshape(geo.num_heads, geo.head_dim).sum(dim=1)
        return LayerScores(heads=standardise(heads), channels=standardise(fluctuation(stats["down_proj"], down_weight)))

    def repair(
        self, stats: InputStats | None, weight: Tensor, keep: Tensor, cfg: PruneConfig
    ) -> tuple[Tensor, Tensor | None]:
        kept = weight[:, keep.to(weight.device)]
        if stats is None:
            return kept, None
        return kept, bias_compensation(stats.to(weight.device), weight, keep)
