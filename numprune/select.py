"""From unit scores to kept units: global ranking (paper Eq. 8) or uniform per-layer allocation.

Pure tensor functions. A *unit* is one attention unit (a KV group, or a slice of query heads) or one MLP
channel. Low score = pruned first. Costs are in parameters, so a ratio can be counted in units (the paper)
or in parameters of attention + MLP weights (our default, what results tables compare).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from numprune.adapters.base import LayerGeometry

RatioOf = Literal["params", "units"]
Allocation = Literal["global", "uniform"]
HeadScaling = Literal["alpha", "none", "error", "split"]
Rounding = Literal["floor", "nearest"]


def unit_count(x: float, rounding: Rounding) -> int:
    """``int(x)`` (floor: the official FLAP / Wanda-sp / LLM-Pruner codes) or ``round(x)`` (nearest; SlimGPT), for
    ``x >= 0``; floor forgives float noise below 1e-9 (``0.3 * 10`` is 3)."""
    if rounding == "floor":
        return math.floor(x + 1e-9)
    if rounding == "nearest":
        return round(x)
    raise ValueError(f"rounding must be 'floor' or 'nearest', got {rounding!r}")


@dataclass(frozen=True)
class LayerUnits:
    """Scores and per-unit parameter costs of one decoder layer."""

    attn_scores: Tensor  # [n_attn_units]
    attn_cost: int  # parameters removed with one attention unit
    mlp_scores: Tensor  # [n_channels]
    mlp_cost: int  # parameters removed with one MLP channel
    fixed: int = 0  # attention+MLP parameters no unit can remove (KV heads and one query head per group in
    # query mode): part of the total the ratio is a fraction of
    # head_scaling="split": cumulative refit errors after removing the k lowest-scored units ([n + 1] each)
    attn_errors: Tensor | None = None
    mlp_errors: Tensor | None = None

    @property
    def params(self) -> int:
        return self.attn_scores.numel() * self.attn_cost + self.mlp_scores.numel() * self.mlp_cost + self.fixed


@dataclass(frozen=True)
class Selection:
    """Kept unit indices per layer (sorted) and what was achieved."""

    kept_attn: list[Tensor]
    kept_mlp: list[Tensor]
    params_total: int
    params_removed: int
    units_total: int
    units_removed: int

    @property
    def params_ratio(self) -> float:
        return self.params_removed / self.params_total

    @property
    def units_ratio(self) -> float:
        return self.units_removed / self.units_total


def _check(ratio: float, min_attn: int, min_mlp: int, round_to: int) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if min_attn < 0 or min_mlp < 0:
        raise ValueError("minimum kept units per layer must be >= 0")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")


def select_units(
    layers: list[LayerUnits],
    ratio: float,
    *,
    ratio_of: RatioOf = "params",
    allocation: Allocation = "global",
    head_scaling: HeadScaling = "alpha",
    min_attn: int = 1,
    min_mlp: int = 1,
    round_to: int = 1,
    layer_ratios: list[float] | None = None,
    rounding: Rounding = "nearest",
) -> Selection:
    """Choose which units to prune so that ``ratio`` of the params (or units) goes.

    Global: every layer's attention scores (times ``alpha`` = attention unit cost / channel cost, the paper's
    ``4 D_h / 3`` for MHA; ``head_scaling="error"``: scores already per parameter, ``numprune.exchange``) and
    channel scores enter one ascending list; units are pruned in that order, skipping
    any that would leave a layer below ``min_attn`` / ``min_mlp``, until the target is reached (params: the
    removed count overshoots by less than one unit). Uniform: every layer prunes ``ratio`` (or its entry of
    ``layer_ratios``) of its attention units, ``int(r * n)`` (``rounding="floor"``, the official per-layer codes)
    or ``round(r * n)`` ("nearest"); the MLP then prunes ``ratio`` of its channels (units) or as many channels as
    bring the layer's removed parameters to ``ratio`` of its own (params: attention units are coarse, e.g. 3 KV
    groups a layer, so the MLP absorbs the rounding and methods compare at equal params), rounded the same way.
    ``head_scaling="split"``: the ``alpha`` selection fixes the parameters each layer loses, and ``best_split``
    re-divides them between attention units and channels by the layer's refit errors (``attn_errors``,
    ``mlp_errors``; the rounding carried from layer to layer, so the total stays within half a channel).
    ``round_to`` then rounds each layer's kept channel count to a multiple (by score within the layer).
    """
    _check(ratio, min_attn, min_mlp, round_to)
    pruned_attn = [torch.zeros(lu.attn_scores.numel(), dtype=torch.bool) for lu in layers]
    pruned_mlp = [torch.zeros(lu.mlp_scores.numel(), dtype=torch.bool) for lu in layers]
    params_total = sum(lu.params for lu in layers)
    units_total = sum(lu.attn_scores.numel() + lu.mlp_scores.numel() for lu in layers)

    if layer_ratios is not None and len(layer_ratios) != len(layers):
        raise ValueError(f"{len(layer_ratios)} layer ratios for {len(layers)} layers")
    if allocation == "uniform":
        for i, lu in enumerate(layers):
            r = ratio if layer_ratios is None else layer_ratios[i]
            n_a, n_m = lu.attn_scores.numel(), lu.mlp_scores.numel()
            k_a = min(unit_count(r * n_a, rounding), max(n_a - min_attn, 0))
            if ratio_of == "params":
                k_m = unit_count(max(r * lu.params - k_a * lu.attn_cost, 0) / lu.mlp_cost, rounding)
            else:
                k_m = unit_count(r * n_m, rounding)
            k_m = max(0, min(k_m, n_m - min_mlp))
            pruned_attn[i][lu.attn_scores.argsort(stable=True)[:k_a]] = True
            pruned_mlp[i][lu.mlp_scores.argsort(stable=True)[:k_m]] = True
    elif allocation == "global":
        scaling: HeadScaling = "alpha" if head_scaling == "split" else head_scaling
        _select_global(
            layers, ratio, ratio_of, scaling, min_attn, min_mlp, pruned_attn, pruned_mlp, params_total, units_total
        )
    else:
        raise ValueError(f"allocation must be 'global' or 'uniform', got {allocation!r}")
    if head_scaling == "split":
        carry = 0.0
        for i, lu in enumerate(layers):
            if lu.attn_errors is None or lu.mlp_errors is None:
                raise ValueError("head_scaling='split' needs every layer's refit-error curves")
            budget = int(pruned_attn[i].sum()) * lu.attn_cost + int(pruned_mlp[i].sum()) * lu.mlp_cost + carry
            n_a, n_m = lu.attn_scores.numel(), lu.mlp_scores.numel()
            k_a, k_m = best_split(lu, budget, max(n_a - min_attn, 0), max(n_m - min_mlp, 0))
            carry = budget - k_a * lu.attn_cost - k_m * lu.mlp_cost
            pruned_attn[i][:], pruned_mlp[i][:] = False, False
            pruned_attn[i][lu.attn_scores.argsort(stable=True)[:k_a]] = True
            pruned_mlp[i][lu.mlp_scores.argsort(stable=True)[:k_m]] = True

    if round_to > 1:
        for i, lu in enumerate(layers):
            pruned_mlp[i] = _round_kept(lu.mlp_scores, pruned_mlp[i], round_to)

    params_removed = sum(
        int(pa.sum()) * lu.attn_cost + int(pm.sum()) * lu.mlp_cost
        for lu, pa, pm in zip(layers, pruned_attn, pruned_mlp)
    )
    units_removed = sum(int(pa.sum()) + int(pm.sum()) for pa, pm in zip(pruned_attn, pruned_mlp))
    return Selection(
        kept_attn=[(~p).nonzero().squeeze(1) for p in pruned_attn],
        kept_mlp=[(~p).nonzero().squeeze(1) for p in pruned_mlp],
        params_total=params_total,
        params_removed=params_removed,
        units_total=units_total,
        units_removed=units_removed,
    )


def _select_global(
    layers: list[LayerUnits],
    ratio: float,
    ratio_of: RatioOf,
    head_scaling: HeadScaling,
    min_attn: int,
    min_mlp: int,
    pruned_attn: list[Tensor],
    pruned_mlp: list[Tensor],
    params_total: int,
    units_total: int,
) -> None:
    if ratio_of not in ("params", "units"):
        raise ValueError(f"ratio_of must be 'params' or 'units', got {ratio_of!r}")
    if head_scaling not in ("alpha", "none", "error"):
        raise ValueError(f"head_scaling must be 'alpha', 'none', 'error' or 'split', got {head_scaling!r}")
    scores, layer_ids, kinds, index, costs = [], [], [], [], []
    for i, lu in enumerate(layers):
        alpha = lu.attn_cost / lu.mlp_cost if head_scaling == "alpha" else 1.0
        for kind, s, cost in ((0, lu.attn_scores * alpha, lu.attn_cost), (1, lu.mlp_scores, lu.mlp_cost)):
            n = s.numel()
            scores.append(s.double().cpu())
            layer_ids.append(torch.full((n,), i))
            kinds.append(torch.full((n,), kind))
            index.append(torch.arange(n))
            costs.append(torch.full((n,), cost))
    order = torch.cat(scores).argsort(stable=True).tolist()
    layer_ids_l, kinds_l = torch.cat(layer_ids).tolist(), torch.cat(kinds).tolist()
    index_l, costs_l = torch.cat(index).tolist(), torch.cat(costs).tolist()

    target = ratio * params_total if ratio_of == "params" else math.floor(ratio * units_total + 1e-9)
    left = [[lu.attn_scores.numel() - min_attn, lu.mlp_scores.numel() - min_mlp] for lu in layers]
    removed = 0
    for j in order:
        if removed >= target:
            break
        layer, kind = layer_ids_l[j], kinds_l[j]
        if left[layer][kind] <= 0:
            continue
        left[layer][kind] -= 1
        (pruned_attn if kind == 0 else pruned_mlp)[layer][index_l[j]] = True
        removed += costs_l[j] if ratio_of == "params" else 1


def best_split(lu: LayerUnits, budget: float, max_attn: int, max_mlp: int) -> tuple[int, int]:
    """Attention units and channels ``(k_a, k_m)`` to prune from one layer that remove ``budget`` parameters
    (to the nearest channel) with the least refit error ``attn_errors[k_a] + mlp_errors[k_m]`` (both curves
    along the units' score order): an exact search over ``k_a``; ties keep fewer attention units."""
    assert lu.attn_errors is not None and lu.mlp_errors is not None
    best: tuple[float, int, int] | None = None
    for k_a in range(max_attn + 1):
        k_m = math.floor((budget - k_a * lu.attn_cost) / lu.mlp_cost + 0.5)
        if k_m < 0:
            break
        if k_m > max_mlp:
            continue
        err = float(lu.attn_errors[k_a] + lu.mlp_errors[k_m])
        if best is None or err < best[0]:
            best = (err, k_a, k_m)
    if best is None:  # the budget exceeds what the minimums allow: as much as they allow
        return max_attn, max_mlp
    return best[1], best[2]


def _round_kept(scores: Tensor, pruned: Tensor, multiple: int) -> Tensor:
    """Round the kept count to the nearest multiple (at least one multiple, at most all), best scores kept."""
    n = scores.numel()
    kept = n - int(pruned.sum())
    target = min(max(multiple * round(kept / multiple), multiple), n)
    out = torch.ones(n, dtype=torch.bool)
    out[scores.argsort(descending=True, stable=True)[:target]] = False
    return out


def gqa_mode(gqa: str, geo: LayerGeometry) -> str:
    """``query`` applies to grouped-query layers; multi-head layers (one query head per KV head) prune whole
    heads either way. A layer with one KV head is one group: ``groups`` could only keep or drop its whole
    attention, so such layers prune query heads within the group (``query``; ``prune_`` warns and records it)."""
    if geo.group_size <= 1:
        return "groups"
    return "query" if geo.num_kv_heads == 1 else gqa


def effective_gqa(gqa: str, geos: list[LayerGeometry]) -> str:
    """The GQA mode the layers of a model get for the asked ``gqa`` (``mixed`` when they differ)."""
    modes = {gqa_mode(gqa, g) for g in geos if g.group_size > 1} or {gqa}
    return modes.pop() if len(modes) == 1 else "mixed"


def attention_units(heads: Tensor, geo: LayerGeometry, gqa: str) -> tuple[Tensor, int, int]:
    """Attention units of one layer from its head scores, the parameters one unit removes, and the attention
    parameters that no unit removes.

    ``groups``: one unit per KV group (mean of its query heads), costing ``D_h * hidden * (2G + 2)`` (no biases).
    ``query``: unit ``k`` removes the k-th lowest query head of every group (score: their mean), costing
    ``KV * D_h * hidden * 2``; the slices are ascending, so any global order prunes them in order.
    """
    g = geo.group_size
    per_group = heads.reshape(geo.num_kv_heads, g)
    if gqa_mode(gqa, geo) == "groups":
        return per_group.mean(dim=1), g * geo.query_head_params + geo.kv_head_params, 0
    slices = per_group.sort(dim=1).values.mean(dim=0)[: g - 1]  # at least one query head per group stays
    cost = geo.num_kv_heads * geo.query_head_params
    return slices, cost, geo.attention_params - (g - 1) * cost


def kept_heads(heads: Tensor, geo: LayerGeometry, gqa: str, kept_units: Tensor, n_units: int) -> tuple[Tensor, Tensor]:
    """Kept query heads and KV heads from the kept attention units."""
    g = geo.group_size
    if gqa_mode(gqa, geo) == "groups":
        kv = kept_units
        return (kv[:, None] * g + torch.arange(g)).reshape(-1), kv
    n_pruned = n_units - kept_units.numel()
    order = heads.reshape(geo.num_kv_heads, g).argsort(dim=1, stable=True)[:, n_pruned:].sort(dim=1).values
    q = (torch.arange(geo.num_kv_heads)[:, None] * g + order).reshape(-1)
    return q, torch.arange(geo.num_kv_heads)
