"""SlimGPT (Ling et al., NeurIPS 2024): structured Optimal Brain Surgeon on ``o_proj`` / ``down_proj`` columns.

With ``H = G + gamma I`` (``G = X^T X / n``, ``gamma = damp * mean(diag G)``) and ``Hinv = H^{-1}``, removing a
set S of input columns costs ``tr(W_S Hinv_SS^{-1} W_S^T)`` and the optimal update of the others is

    W <- W - W_S Hinv_SS^{-1} Hinv_S:          Hinv <- Hinv - Hinv_:S Hinv_SS^{-1} Hinv_S:     (OBS, set form)

Batched greedy pruning: repeatedly remove the cheapest unit(s) (a head / KV group: its block of columns, the
"grouped Cholesky" error; MLP channels: a batch of the cheapest ``D / 64`` columns, a fixed stand-in for the
dynamic group size), updating W and Hinv. A unit's score is its position in that removal order, so a layer
that prunes k units prunes the first k removed. Repair: the closed-form OBS update for the chosen set, which
equals the sequence of greedy updates (and the damped least-squares refit of the kept columns).
Incremental pruning ratio: per-layer ratios grow with ``log(l + 1)`` from 0 at the first layer, their mean
is ``ratio`` (our reading of the paper's log-increasing schedule; capped at 0.95, excess spread upwards).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from numprune.adapters.base import LayerGeometry
from numprune.calibrate import InputStats
from numprune.config import PruneConfig
from numprune.methods.base import LayerScores, Method
from numprune.select import gqa_mode

MLP_STEPS = 64


def damped_inverse(gram: Tensor, damp: float) -> Tensor:
    g = gram.to(torch.float64)
    h = g + damp * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(h))


def obs_remove_(w: Tensor, hinv: Tensor, cols: Tensor) -> None:
    """Remove columns ``cols`` of ``w`` ([out, in], float64) with the OBS update; downdate ``hinv`` in place."""
    block = torch.linalg.inv(hinv[cols][:, cols])  # Hinv_SS^{-1}
    rows = hinv[cols]  # Hinv_S:
    w -= w[:, cols] @ block @ rows
    hinv -= rows.T @ block @ rows
    w[:, cols] = 0.0


def greedy_order(gram: Tensor, weight: Tensor, units: list[Tensor], per_step: int, damp: float) -> Tensor:
    """Removal position of every unit (a unit = a tensor of column indices) under batched greedy OBS."""
    w = weight.to(device=gram.device, dtype=torch.float64).clone()
    hinv = damped_inverse(gram, damp)
    position = torch.full((len(units),), float(len(units)), dtype=torch.float64)
    alive = list(range(len(units)))
    step = 0
    while len(alive) > 1:
        errors = torch.stack([_unit_error(w, hinv, units[u]) for u in alive])
        take = errors.argsort(stable=True)[: min(per_step, len(alive) - 1)].tolist()
        chosen = [alive[t] for t in take]
        for rank, u in enumerate(chosen):
            position[u] = step + rank
        step += len(chosen)
        obs_remove_(w, hinv, torch.cat([units[u] for u in chosen]))
        alive = [u for u in alive if u not in set(chosen)]
    return position


def _unit_error(w: Tensor, hinv: Tensor, cols: Tensor) -> Tensor:
    if cols.numel() == 1:
        return w[:, cols[0]].pow(2).sum() / hinv[cols[0], cols[0]]
    ws = w[:, cols]
    return torch.trace(ws @ torch.linalg.solve(hinv[cols][:, cols], ws.T))


def obs_update(gram: Tensor, weight: Tensor, keep: Tensor, damp: float) -> Tensor:
    """Closed-form OBS update of the kept columns after removing all the others at once (``[out, len(keep)]``)."""
    w = weight.to(device=gram.device, dtype=torch.float64)
    hinv = damped_inverse(gram, damp)
    pruned = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    pruned[keep.to(w.device)] = False
    p = pruned.nonzero().squeeze(1)
    if p.numel() == 0:
        return weight[:, keep.to(weight.device)].clone()
    new = w - w[:, p] @ torch.linalg.solve(hinv[p][:, p], hinv[p])
    return new[:, keep.to(w.device)].to(device=weight.device, dtype=weight.dtype)


def log_increasing_ratios(ratio: float, num_layers: int, cap: float = 0.95) -> list[float]:
    """Per-layer ratios ``c * log(l + 1)`` with mean ``ratio`` (first layer 0), each at most ``cap``."""
    shape = [math.log(i + 1) for i in range(num_layers)]
    if ratio == 0 or sum(shape) == 0:
        return [ratio] * num_layers
    c = ratio * num_layers / sum(shape)
    out = [min(c * s, cap) for s in shape]
    for _ in range(num_layers):  # spread what the cap cut off over the layers below it
        deficit = ratio * num_layers - sum(out)
        free = [i for i, r in enumerate(out) if r < cap and r > 0]
        if deficit <= 1e-12 or not free:
            break
        for i in free:
            out[i] = min(out[i] + deficit / len(free), cap)
    return out


class SlimGPT(Method):
    name = "slimgpt"
    default_allocation = "uniform"
    repair_kind = "refit"

    def score(
        self, stats: dict[str, InputStats], o_weight: Tensor, down_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig
    ) -> LayerScores:
        cols = torch.arange(geo.num_heads * geo.head_dim).reshape(geo.num_heads, geo.head_dim)
        if gqa_mode(cfg.gqa, geo) == "groups":  # one OBS unit per KV group: the columns of its G query heads
            units = list(cols.reshape(geo.num_kv_heads, -1))
            heads = greedy_order(stats["o_proj"].gram, o_weight, units, 1, cfg.damp).repeat_interleave(geo.group_size)
        else:
            heads = greedy_order(stats["o_proj"].gram, o_weight, list(cols), 1, cfg.damp)
        units = list(torch.arange(geo.intermediate)[:, None])
        per_step = max(1, geo.intermediate // MLP_STEPS)
        channels = greedy_order(stats["down_proj"].gram, down_weight, units, per_step, cfg.damp)
        return LayerScores(heads=heads, channels=channels)

    def repair(
        self, stats: InputStats | None, weight: Tensor, keep: Tensor, cfg: PruneConfig
    ) -> tuple[Tensor, Tensor | None]:
        if stats is None:
            return super().repair(stats, weight, keep, cfg)
        return obs_update(stats.gram, weight, keep, cfg.damp), None

    def layer_ratios(self, ratio: float, num_layers: int) -> list[float]:
        return log_increasing_ratios(ratio, num_layers)
