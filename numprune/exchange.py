"""The error exchange rate (``head_scaling="error"``): every unit of a layer ranked by the output error that its
removal leaves after the closed-form refit (OBS), per parameter removed (docs/method.md, "Error exchange rate").

Pure tensor functions. For one output projection (``W = weight.T`` ``[D, out]``) and the damped Gram
``Gd = G + gamma I``, removing the input columns ``S`` and refitting the others (Eq. 11, fixed ``gamma``) leaves

    E(S) = min_{W'_K} tr((W - W')^T Gd (W - W')) = tr(W_S^T ((Gd^{-1})_SS)^{-1} W_S)      (block OBS)

A greedy removal curve removes, step after step, the unit that adds the least ``E`` (exact block OBS updates
of ``Gd^{-1}`` and of the refit ``W``), so ``E_k`` is the exact refit error of the first ``k`` steps' union;
units are ranked by the slope of the lower convex hull of ``(parameters removed, E_k)``. The curves along a
fixed ranking (``head_scaling="split"``) come in one factorisation from ``numprune.curves``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from numprune.adapters.base import LayerGeometry
from numprune.select import gqa_mode


def damping(gram: Tensor, damp: float) -> Tensor:
    """``gamma = damp * mean(diag G)`` (float64, 0-dim): the damping of ``numprune.compensate``, fixed at the
    full set's diagonal so that the refit objective is one quadratic for every removed set."""
    return damp * gram.diagonal().to(torch.float64).mean().clamp_min(torch.finfo(torch.float64).tiny)


def damped_gram(gram: Tensor, damp: float) -> Tensor:
    """``G + gamma I`` in float64 (``damping``), on the diagonal of a copy."""
    out = gram.to(torch.float64, copy=True)
    out.diagonal().add_(damping(gram, damp))
    return out


def gram_inverse(gd: Tensor) -> Tensor:
    """``Gd^{-1}`` by Cholesky (``ridged_cholesky``)."""
    return torch.cholesky_inverse(ridged_cholesky(gd))


def ridged_cholesky(gd: Tensor) -> Tensor:
    """The lower Cholesky factor of ``Gd``; a tiny ridge is added (growing 10x, on the diagonal of a copy) only
    when ``Gd`` is singular (damp=0)."""
    scale = gd.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    rel = 0.0
    for _ in range(12):
        ridged = gd
        if rel > 0.0:
            ridged = gd.clone()
            ridged.diagonal().add_(rel * scale)
        chol, info = torch.linalg.cholesky_ex(ridged)
        if int(info) == 0:
            return chol
        rel = max(rel * 10.0, 1e-12)
    raise torch.linalg.LinAlgError("the Gram matrix is not positive definite even with a ridge")


def removal_errors(hinv: Tensor, w: Tensor, cols: Tensor) -> Tensor:
    """Block OBS error ``tr(W_S^T (Hinv_SS)^{-1} W_S)`` of removing each candidate ``S = cols[u]`` alone.

    ``hinv``: ``[D, D]`` inverse damped Gram of the kept columns; ``w``: ``[D, out]`` refit weight; ``cols``:
    ``[n, b]`` column indices of ``n`` candidate units of ``b`` columns each.
    """
    if cols.shape[1] == 1:
        c = cols[:, 0]
        return (w[c] ** 2).sum(dim=1) / hinv[c, c]
    h = hinv[cols[:, :, None], cols[:, None, :]]  # [n, b, b]
    ws = w[cols]  # [n, b, out]
    return (ws * torch.linalg.solve(h, ws)).sum(dim=(1, 2))


def _remove(hinv: Tensor, w: Tensor, s: Tensor) -> float:
    """Remove columns ``s`` (positions in ``hinv`` / ``w``) in place: the refit of the others (OBS update) and
    the inverse Gram of the kept columns (rows and columns ``s`` set to zero); returns the added error."""
    h_ks = hinv[:, s]  # [D, b]
    ws = w[s]  # [b, out]
    sol = torch.linalg.solve(h_ks[s], torch.cat([ws, h_ks.T], dim=1))  # [b, out + D]
    sol_w, sol_h = sol[:, : ws.shape[1]], sol[:, ws.shape[1] :]
    w.addmm_(h_ks, sol_w, alpha=-1.0)
    hinv.addmm_(h_ks, sol_h, alpha=-1.0)
    w[s] = 0.0
    hinv[s] = 0.0
    hinv[:, s] = 0.0
    return float((ws * sol_w).sum())


def removal_curve(
    gram: Tensor,
    weight: Tensor,
    units: Tensor,
    *,
    damp: float,
    pools: Sequence[Sequence[int]] | None = None,
    per_step: int = 1,
    order: Sequence[Sequence[int]] | None = None,
    steps: int | None = None,
) -> tuple[list[list[int]], Tensor]:
    """Sequential OBS removal of the units of one projection; returns the units removed at each step (in the
    order they were chosen) and the cumulative errors ``[steps + 1]`` (``E_0 = 0``).

    Args:
        gram: ``[D, D]`` Gram matrix of the projection's inputs; ``weight``: ``[out, D]``.
        units: ``[n, b]`` input columns of each unit (a head, a KV group, an MLP channel).
        damp: damping relative to ``mean(diag G)``, as the compensation's.
        pools: each step removes one unit from every pool (query heads within KV groups: one pool per group),
            the pool's best first, then the best of the pools not yet visited in this step; default one pool
            and ``per_step`` units a step (the ``per_step`` least errors, removed jointly).
        order: the units each step removes, fixed in advance (the curve of another ranking, e.g. Algorithm 1's).
        steps: how many steps (default: until every unit is gone, or a pool is down to one unit).
    """
    n = units.shape[0]
    gd = damped_gram(gram, damp)
    hinv = gram_inverse(gd)
    w = weight.to(device=hinv.device, dtype=torch.float64).T.clone()
    units = units.to(hinv.device)
    pos = torch.arange(hinv.shape[0], device=hinv.device)  # original column -> position in the kept matrices
    gone = torch.zeros(pos.numel(), dtype=torch.bool, device=pos.device)
    alive = torch.ones(n, dtype=torch.bool)

    def drop(step: list[int]) -> float:
        nonlocal hinv, w, pos
        cols = units[step].reshape(-1)
        added = _remove(hinv, w, pos[cols])
        gone[cols] = True
        zeros = hinv.shape[0] - (gone.numel() - int(gone.sum()))  # removed columns still in the matrices
        if 4 * zeros > hinv.shape[0]:  # compact once a quarter of them is zeros
            kept = pos[(~gone).nonzero().squeeze(1)]
            hinv, w = hinv[kept][:, kept], w[kept]
            pos = (~gone).cumsum(0) - 1  # removed columns are never looked up again
        return added

    if pools is None:
        pools_l = [list(range(n))]
        default_steps = -(-n // per_step)
    else:
        pools_l = [list(p) for p in pools]
        per_step = 1
        default_steps = min(len(p) for p in pools_l) - 1
    total = default_steps if order is None else len(order)
    total = total if steps is None else min(steps, total)
    chosen: list[list[int]] = []
    errors = [0.0]
    for k in range(total):
        step: list[int] = []
        if order is not None:
            step = list(order[k])
            added = drop(step)
        elif pools is None:
            cand = alive.nonzero().squeeze(1)
            err = removal_errors(hinv, w, pos[units[cand.to(units.device)]])
            step = cand[err.argsort(stable=True)[:per_step].cpu()].tolist()
            added = drop(step)
        else:
            added, todo = 0.0, list(range(len(pools_l)))
            while todo:  # one unit from every pool: the least added error first, refit after each
                cand = torch.tensor([u for p in todo for u in pools_l[p] if alive[u]])
                err = removal_errors(hinv, w, pos[units[cand.to(units.device)]])
                u = int(cand[int(err.argmin())])
                added += drop([u])
                alive[u] = False
                step.append(u)
                todo = [p for p in todo if u not in pools_l[p]]
        alive[step] = False
        chosen.append(step)
        errors.append(errors[-1] + added)
    return chosen, torch.tensor(errors, dtype=torch.float64)


def hull_slopes(costs: Tensor, errors: Tensor) -> Tensor:
    """Per step, the slope of the lower convex hull of ``(cumulative cost, E)`` over the segment that contains it.

    ``costs``: ``[k]`` parameters each step removes; ``errors``: ``[k + 1]`` cumulative errors, ``E_0 = 0``.
    The slopes are nondecreasing: merging every curve's steps in ascending slope order removes, at each hull
    vertex, the sets of least total error for their total cost among the curves' prefixes.
    """
    x = torch.cat([costs.new_zeros(1), costs.to(torch.float64).cumsum(0)]).tolist()
    y = errors.tolist()
    hull = [0]
    for i in range(1, len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):  # b on or above segment a-i
                hull.pop()
            else:
                break
        hull.append(i)
    slopes = torch.empty(len(x) - 1, dtype=torch.float64)
    for a, b in itertools.pairwise(hull):
        slopes[a:b] = (y[b] - y[a]) / (x[b] - x[a])
    return slopes


def unit_scores(chosen: list[list[int]], slopes: Tensor, n: int) -> Tensor:
    """Scores ``[n]``: each unit gets its step's hull slope, made strictly increasing in removal order by the
    smallest float64 increments (ties on a hull segment keep the greedy order in any sort); units never
    removed get ``+inf``."""
    out = [math.inf] * n
    prev = -math.inf
    for step, s in zip(chosen, slopes.tolist()):
        for u in step:
            out[u] = prev = max(s, math.nextafter(prev, math.inf))
    return torch.tensor(out, dtype=torch.float64)


def output_energy(gram: Tensor, weight: Tensor) -> float:
    """``tr(W^T G W)``: the mean squared output of a projection (its error when every input column goes)."""
    w = weight.to(device=gram.device, dtype=torch.float64)
    return float(torch.einsum("oi,ij,oj->", w, gram.to(torch.float64), w))


def attention_steps(
    geo: LayerGeometry, gqa: str, heads_order: Tensor | None
) -> tuple[Tensor, list[list[int]] | None, list[list[int]] | None, int]:
    """The selection's attention units of one layer as ``o_proj`` input columns (``attention_units``): the
    units' columns ``[n, b]``, their pools (``query``: one per KV group), the units each step removes along
    ``heads_order`` (``groups``: KV groups by ascending mean score; ``query``: at step ``k`` the k-th lowest
    query head of every group, one per group always stays; ``None`` without an order) and one step's parameters."""
    h, g, d_h = geo.num_heads, geo.group_size, geo.head_dim
    head_cols = torch.arange(h * d_h).reshape(h, d_h)
    if gqa_mode(gqa, geo) == "groups":
        cost = g * geo.query_head_params + geo.kv_head_params
        order = None if heads_order is None else [[int(u)] for u in heads_order.reshape(-1, g).mean(1).argsort()]
        return head_cols.reshape(geo.num_kv_heads, g * d_h), None, order, cost
    pools = [list(range(k * g, (k + 1) * g)) for k in range(geo.num_kv_heads)]
    order = None
    if heads_order is not None:
        ranked = heads_order.reshape(geo.num_kv_heads, g).argsort(dim=1) + torch.arange(0, h, g)[:, None]
        order = ranked.T[: g - 1].tolist()
    return head_cols, pools, order, geo.num_kv_heads * geo.query_head_params


def _attention_curve(
    gram: Tensor, weight: Tensor, geo: LayerGeometry, gqa: str, heads_order: Tensor | None, **opts: Any
) -> tuple[list[list[int]], Tensor, int, int]:
    """The ``o_proj`` removal curve over the selection's attention units (``attention_steps``): chosen steps,
    cumulative errors, the parameters one step removes and the number of units (``opts``: ``removal_curve``'s)."""
    units, pools, order, cost = attention_steps(geo, gqa, heads_order)
    chosen, err = removal_curve(gram, weight, units, pools=pools, order=order, **opts)
    return chosen, err, cost, units.shape[0]


def _channel_curve(
    gram: Tensor, weight: Tensor, geo: LayerGeometry, channels_order: Tensor | None, **opts: Any
) -> tuple[list[list[int]], Tensor]:
    order = None
    if channels_order is not None:
        order = [c.tolist() for c in channels_order.argsort(stable=True).split(opts["per_step"])]
    return removal_curve(gram, weight, torch.arange(geo.intermediate)[:, None], order=order, **opts)


def layer_error_scores(
    o_gram: Tensor,
    o_weight: Tensor,
    down_gram: Tensor,
    down_weight: Tensor,
    geo: LayerGeometry,
    *,
    gqa: str,
    damp: float,
    per_step: int = 1,
    heads_order: Tensor | None = None,
    channels_order: Tensor | None = None,
    norm: str = "layer",
) -> tuple[Tensor, Tensor]:
    """Per query head ``[H]`` and per MLP channel ``[I]``: hull slope of its layer's refit-error curve per
    parameter removed (low = prune first; one scale for heads and channels, across layers).

    Attention units as the selection uses them (``numprune.select.attention_units``): whole KV groups
    (``groups``: a step removes one group) or query heads within groups (``query``: a step removes one query
    head of every group, so a slice of the selection). ``heads_order`` / ``channels_order``: scores whose
    ascending order fixes the removal order (the curve of another ranking) instead of the greedy choice.
    ``norm="layer"`` divides both curves by the layer's dense output energy ``tr(W_o^T G_o W_o) +
    tr(W_d^T G_d W_d)`` (what attention and MLP write into the residual stream), so that layers compare by the
    fraction of their output they lose; ``"absolute"`` keeps the raw errors.
    """
    if norm not in ("layer", "absolute"):
        raise ValueError(f"norm must be 'layer' or 'absolute', got {norm!r}")
    scale = 1.0
    if norm == "layer":
        scale = output_energy(o_gram, o_weight) + output_energy(down_gram, down_weight)
    chosen, err, cost, n = _attention_curve(o_gram, o_weight, geo, gqa, heads_order, damp=damp)
    unit = unit_scores(chosen, hull_slopes(torch.full((len(chosen),), float(cost)), err / scale), n)
    heads = unit.repeat_interleave(geo.group_size) if gqa_mode(gqa, geo) == "groups" else unit
    chosen, err = _channel_curve(down_gram, down_weight, geo, channels_order, damp=damp, per_step=per_step)
    costs = torch.tensor([len(s) * geo.channel_params for s in chosen], dtype=torch.float64)
    return heads, unit_scores(chosen, hull_slopes(costs, err / scale), geo.intermediate)
