"""Depth pruning: remove whole decoder blocks, the least influential first (ShortGPT, Men et al., 2024).

Block Influence (ShortGPT Eq. 1): ``BI_i = 1 - E_tokens[cos(x_i, x_{i+1})]`` with ``x_i`` the hidden state that
enters block ``i`` and ``x_{i+1}`` the one that leaves it, on the calibration tokens of the dense model (the
official icip-cas/ShortGPT sums the per-token values over its calibration set: the same ranking for equal token
counts). Scored once, removed together: the blocks with the lowest BI, as many as bring the removed attention+MLP
parameters closest to the asked ratio. SLEB (Song et al., 2024) instead removes blocks one at a time by their
effect on the calibration perplexity; it is not implemented (docs/quality.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from numprune.adapters.base import Adapter, residual_adapter
from numprune.calibrate import LayerwiseRunner
from numprune.config import PruneConfig
from numprune.methods.base import Method, Transformed
from numprune.plan import LayerPlan


def block_influence(inputs: list[Tensor], outputs: list[Tensor]) -> float:
    """``1 - mean cos(x_in, x_out)`` over every token of every sample (float64; 0 for a block that changes
    nothing, up to 2 for one that reverses its input)."""
    sims = [
        F.cosine_similarity(x.double().reshape(-1, x.shape[-1]), y.double().reshape(-1, y.shape[-1]), dim=-1)
        for x, y in zip(inputs, outputs)
    ]
    return float(1 - torch.cat(sims).mean())


def blocks_to_remove(scores: list[float], costs: list[int], ratio: float) -> list[int]:
    """The lowest-scoring blocks (ties: the earlier block first), as many as bring the removed share of the total
    cost closest to ``ratio`` (ties: fewer blocks), keeping at least one block; sorted indices."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    total, removed, best, best_gap = sum(costs), 0, 0, ratio
    for k, i in enumerate(order[:-1], start=1):
        removed += costs[i]
        gap = abs(removed / total - ratio)
        if gap < best_gap - 1e-12:
            best, best_gap = k, gap
    return sorted(order[:best])


@torch.no_grad()
def influence_scores(
    model: nn.Module, adapter: Adapter, calibration: Tensor, device: torch.device, progress: bool = False
) -> list[float]:
    """Block Influence of every decoder layer, one layer-by-layer pass over the calibration samples."""
    runner = LayerwiseRunner(model, adapter, calibration, device, progress)
    scores: list[float] = []

    def visit(_i: int, layer: nn.Module) -> list[Tensor]:
        outs = runner.forward(layer)
        scores.append(block_influence(runner.hidden, outs))
        return outs

    runner.walk(visit, desc="block influence")
    return scores


class Depth(Method):
    """Remove the decoder blocks of lowest Block Influence (ShortGPT) to the asked attention+MLP ratio."""

    name = "depth"
    scoring = "transform"

    def transform_(self, model: nn.Module, adapter: Adapter, calibration: Tensor, cfg: PruneConfig) -> Transformed:
        ra = residual_adapter(adapter, self.name)
        layers = adapter.layers(model)
        geos = [adapter.geometry(layer) for layer in layers]
        device = torch.device(cfg.device) if cfg.device else next(model.parameters()).device
        scores = influence_scores(model, adapter, calibration, device, cfg.progress)
        removed = blocks_to_remove(scores, [g.params for g in geos], cfg.ratio)
        ra.remove_layers_(model, removed)
        gone = [geos[i] for i in removed]
        total = sum(g.params for g in geos)
        achieved: dict[str, float | int] = {
            "params_ratio": sum(g.params for g in gone) / total,
            "units_ratio": len(removed) / len(geos),  # blocks
            "attn_mlp_params_total": total,
            "attn_mlp_params_removed": sum(g.params for g in gone),
            "attn_units_total": sum(g.num_heads for g in geos),
            "attn_units_pruned": sum(g.num_heads for g in gone),
            "heads_total": sum(g.num_heads for g in geos),
            "heads_pruned": sum(g.num_heads for g in gone),
            "kv_heads_pruned": sum(g.num_kv_heads for g in gone),
            "channels_total": sum(g.intermediate for g in geos),
            "channels_pruned": sum(g.intermediate for g in gone),
        }
        # a removed block keeps no head and no channel (what an empty block computes: the residual passes on)
        plans = [
            LayerPlan([], [], [])
            if i in removed
            else LayerPlan(list(range(g.num_heads)), list(range(g.num_kv_heads)), list(range(g.intermediate)))
            for i, g in enumerate(geos)
        ]
        record = {"kind": "depth", "dense_layers": len(geos), "removed_layers": removed, "block_influence": scores}
        return Transformed(layers=plans, achieved=achieved, transform=record)
