"""FLAP (An et al., AAAI 2024) as its official code runs (CASIA-IVA-Lab/FLAP ``lib/prune.py``, ``prune_flap``
with ``--metrics WIFV --structure AL-AM``): fluctuation metric, per-layer standardisation, adaptive global
structure, bias compensation.

Fluctuation of input channel ``j`` of ``o_proj`` / ``down_proj`` (WIFV): ``var(X_j) * ||W[:, j]||^2``, from the
dense pass. Attention: the per-channel WIFV is **squared**, standardised over the layer's ``H * D_h`` channels
(``(x - mean) / std``, ``torch.std`` with N-1), then averaged over each head's ``D_h`` channels. MLP: the
per-channel WIFV unsquared, standardised over the layer's channels. All layers' heads and channels are then
ranked in one list *without* a head scaling (FLAP counts a head's parameters only in the threshold: our
``head_scaling="none"`` with ``ratio_of="params"``). Repair: no weight update; the pruned columns' mean
contribution becomes a bias, ``b = W[:, P] @ E[X_P]``, from the **dense** pass's means (``compensation="dense"``,
as FLAP computes every mask and bias from one dense pass), so the output mean on the calibration data is kept.
GQA (which FLAP's code does not support): a KV group's score is the mean of its query heads' scores
(``numprune.select.attention_units``); docs/quality.md lists every difference from the official code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from numprune.adapters.base import LayerGeometry
from numprune.calibrate import InputStats
from numprune.config import PruneConfig
from numprune.methods.base import LayerScores, Method


def fluctuation(stats: InputStats, weight: Tensor) -> Tensor:
    """WIFV ``var(X_j) * ||weight[:, j]||^2`` per input channel (float64, ``[in]``)."""
    w = weight.to(device=stats.gram.device, dtype=torch.float64)
    return stats.variance * (w**2).sum(dim=0)


def standardise(x: Tensor) -> Tensor:
    """``(x - mean) / std`` over one layer's units, ``std`` with N-1 as ``torch.std`` (a constant vector maps to
    zeros)."""
    std = x.std() if x.numel() > 1 else x.new_tensor(0.0)
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def flap_head_scores(stats: InputStats, o_weight: Tensor, num_heads: int) -> Tensor:
    """Official FLAP attention score: channel WIFV squared, standardised over the channels, mean per head."""
    channels = standardise(fluctuation(stats, o_weight) ** 2)
    return channels.reshape(num_heads, -1).mean(dim=1)


def flap_channel_scores(stats: InputStats, down_weight: Tensor) -> Tensor:
    """Official FLAP MLP score: channel WIFV, standardised over the layer's channels."""
    return standardise(fluctuation(stats, down_weight))


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
    default_compensation = "dense"  # the official bias comes from the dense pass's input means
    repair_kind = "bias"

    def score(
        self, stats: dict[str, InputStats], o_weight: Tensor, down_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig
    ) -> LayerScores:
        return LayerScores(
            heads=flap_head_scores(stats["o_proj"], o_weight, geo.num_heads),
            channels=flap_channel_scores(stats["down_proj"], down_weight),
        )

    def repair(
        self, stats: InputStats | None, weight: Tensor, keep: Tensor, cfg: PruneConfig
    ) -> tuple[Tensor, Tensor | None]:
        kept = weight[:, keep.to(weight.device)]
        if stats is None:
            return kept, None
        return kept, bias_compensation(stats.to(weight.device), weight, keep)
