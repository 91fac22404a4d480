"""Closed-form compensation of a pruned output projection (paper Theorem 3, Eq. 11).

After removing input columns P of ``o_proj`` / ``down_proj`` (kept columns K), the kept columns are refit by
damped least squares to reproduce the dense output on the calibration inputs:

    W_K <- W_K + (G_KK + gamma I)^{-1} G_KP W_P        (W = weight.T, [in, out])

With ``gamma = 0`` this equals ``lstsq(X_K, X W)``: the paper's ``-(2G)^{-1} M_P (M_P^T (2G)^{-1} M_P)^{-1}
M_P^T W`` restricted to the kept rows. The damping pulls the update towards zero (SparseGPT convention).
"""

from __future__ import annotations

import torch
from torch import Tensor

from numprune.linalg import cholesky_solve


def compensate(gram: Tensor, weight: Tensor, keep: Tensor, damp: float = 0.01) -> Tensor:
    """New ``[out, len(keep)]`` weight for the kept input columns of one projection.

    Args:
        gram: ``[in, in]`` Gram matrix of the projection's inputs (any normalisation; damping is relative), or
            only its kept rows ``G[keep, :]`` (``[len(keep), in]``, in ``keep``'s order): all the refit reads.
        weight: ``[out, in]`` dense weight.
        keep: indices of the kept input columns (any order; the result follows it).
        damp: ``gamma`` as a fraction of ``mean(diag(G_KK))``.
    """
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    d = weight.shape[1]
    keep = keep.to(device=gram.device, dtype=torch.long)
    mask = torch.ones(d, dtype=torch.bool, device=gram.device)
    mask[keep] = False
    prune = mask.nonzero().squeeze(1)
    w = weight.to(device=gram.device, dtype=torch.float64).T  # [in, out]
    if prune.numel() == 0:
        return weight[:, keep.to(weight.device)].clone()
    if gram.shape not in ((d, d), (len(keep), d)):
        raise ValueError(f"gram must be [{d}, {d}] or its kept rows [{len(keep)}, {d}], got {list(gram.shape)}")
    g = gram.to(torch.float64)
    rows = keep if g.shape[0] == d else torch.arange(len(keep), device=g.device)  # G_K's rows in ``gram``
    rhs = g[rows[:, None], prune] @ w[prune]  # [K, out]
    g_kk = g[rows[:, None], keep]  # a copy: damped in place, no D x D identity
    gamma = damp * g_kk.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    g_kk.diagonal().add_(gamma)
    chol, info = torch.linalg.cholesky_ex(g_kk)
    if int(info) == 0:
        del g_kk  # the factor and the gathered blocks are the only K x K / K x P matrices at a time
        delta = cholesky_solve(chol, rhs)
    else:  # G_KK singular and no damping: minimum-norm least squares
        delta = torch.linalg.lstsq(g_kk, rhs).solution
    new = (w[keep] + delta).T
    return new.to(device=weight.device, dtype=weight.dtype).contiguous()


def output_error(gram: Tensor, weight: Tensor, new_weight: Tensor, keep: Tensor) -> float:
    """``tr((W - W')^T G (W - W'))``: mean squared output error of a pruned projection (W' zero outside keep)."""
    full = torch.zeros_like(weight, dtype=torch.float64)
    full[:, keep] = new_weight.to(torch.float64)
    diff = (weight.to(torch.float64) - full).to(gram.device)
    return float(torch.einsum("oi,ij,oj->", diff, gram.to(torch.float64), diff))
