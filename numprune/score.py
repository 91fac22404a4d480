"""Numerical scores of input channels (paper Algorithm 1) and their pooling onto heads / KV groups.

Pure tensor functions: no transformers, no Lightning, no I/O.

Notation (METHOD.md): ``weight`` is the ``nn.Linear`` layout ``[out, in]``; the paper's ``W = weight.T``.
``A = (W W^T) ∘ G`` is ``[in, in]``. The relaxed mask problem for one projection is

    L(z) = 1/2 (1 - z)^T A (1 - z) + lam/2 (1^T z - r)^2,     r = (1 - ratio) * D.

It is an exact quadratic, so one Newton step from any start reaches the minimiser; ``lam=None`` is the
hard-constraint limit ``lam -> inf`` (scale-free, the default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from numprune.linalg import cholesky_solve, symmetric_gram


def channel_interaction(gram: Tensor, weight: Tensor) -> Tensor:
    """``A = (W W^T) ∘ G`` in float64, with ``W = weight.T`` (paper Eq. 5-6)."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square, got {tuple(gram.shape)}")
    if weight.ndim != 2 or weight.shape[1] != gram.shape[0]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match gram {tuple(gram.shape)} ([out, in] layout)")
    w = weight.to(device=gram.device, dtype=torch.float64)
    return symmetric_gram(w).mul_(gram.to(torch.float64))


class _RidgeSolver:
    """Cholesky of ``A + eps * mean(diag A) * I``; the ridge grows by 10x until the factorisation succeeds.

    The ridge goes on ``a``'s own diagonal (``a`` becomes the ridged matrix, which the Newton step reads) and the
    solves are two triangular ones (``cholesky_solve`` copies its factor): ``A`` and its factor are the only
    ``D x D`` matrices at the peak."""

    def __init__(self, a: Tensor, eps: float, max_tries: int = 8) -> None:
        scale = a.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
        diag = a.diagonal()
        plain = diag.clone()
        rel = eps
        for _ in range(max_tries):
            if rel > 0:
                diag.copy_(plain + rel * scale)
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info) == 0:
                self.a, self.chol, self.eps = a, chol, rel
                return
            rel = max(rel * 10.0, 1e-10)
        raise torch.linalg.LinAlgError(f"A is not positive definite even with ridge {rel:g} x mean(diag)")

    def solve(self, b: Tensor) -> Tensor:
        return cholesky_solve(self.chol, b.unsqueeze(-1)).squeeze(-1)


def _newton_step(solver: _RidgeSolver, u: Tensor, z: Tensor, r: float, lam: float | None) -> Tensor:
    """One Newton step ``z - H^{-1} g(z)`` with ``H = A + lam 1 1^T`` (Sherman-Morrison; lam=None: KKT limit)."""
    ones = torch.ones_like(z)
    g = solver.a @ (z - 1.0)
    if lam is not None:
        g = g + lam * (z.sum() - r) * ones
    y = solver.solve(g)  # A^{-1} g
    s = u.sum()  # 1^T A^{-1} 1
    if lam is None:
        # Equality-constrained Newton: the step lands on 1^T z = r exactly.
        nu = (z.sum() - r - y.sum()) / s
        return z - y - nu * u
    return z - (y - lam * y.sum() / (1.0 + lam * s) * u)


def numerical_score(
    gram: Tensor,
    weight: Tensor,
    ratio: float,
    lam: float | None = None,
    iters: int = 1,
    box: bool = False,
    eps: float = 1e-5,
    z0: Tensor | None = None,
) -> Tensor:
    """Score every input channel of one projection by the relaxed-mask minimiser (Algorithm 1).

    Args:
        gram: ``[in, in]`` Gram matrix ``X^T X / N`` of the projection's inputs.
        weight: ``[out, in]`` weight of the projection (``o_proj`` or ``down_proj``).
        ratio: fraction of channels the constraint removes, in ``[0, 1)``; sets ``r = (1 - ratio) * in``.
        lam: penalty weight; ``None`` is the hard-constraint limit (scale-free, the default).
        iters: Newton iterations T. Unconstrained, T >= 1 all give the closed form (exact quadratic).
        box: project onto ``[0, 1]`` after each step (projected Newton). The objective is quadratic, so every
            step lands on the unconstrained minimiser and the result is its clamp, whatever T and ``z0``
            (not the box-constrained minimiser; tests/test_score.py checks it).
        eps: ridge relative to ``mean(diag A)``, added before the Cholesky solve.
        z0: starting point (default ``(1 - ratio)`` everywhere, which is feasible).

    Returns:
        float64 ``[in]`` scores; low = prune first. Unboxed scores can be negative.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if lam is not None and lam <= 0:
        raise ValueError(f"lam must be positive (or None for the hard limit), got {lam}")
    a = channel_interaction(gram, weight)
    d = a.shape[0]
    r = (1.0 - ratio) * d
    solver = _RidgeSolver(a, eps)
    u = solver.solve(torch.ones(d, dtype=a.dtype, device=a.device))  # A^{-1} 1
    if not box:
        # Closed form: z* = 1 - c A^{-1} 1 (what any number of Newton steps returns).
        c = (d - r) / u.sum() if lam is None else lam * (d - r) / (1.0 + lam * u.sum())
        return 1.0 - c * u
    z = torch.full((d,), 1.0 - ratio, dtype=a.dtype, device=a.device) if z0 is None else z0.to(a)
    for _ in range(iters):
        z = _newton_step(solver, u, z, r, lam).clamp_(0.0, 1.0)
    return z


def newton_iterations(
    gram: Tensor, weight: Tensor, ratio: float, lam: float | None, iters: int, z0: Tensor, eps: float = 1e-5
) -> Tensor:
    """Plain (unprojected) Newton iterations of Algorithm 1 from ``z0``; the test oracle for the closed form."""
    a = channel_interaction(gram, weight)
    d = a.shape[0]
    solver = _RidgeSolver(a, eps)
    u = solver.solve(torch.ones(d, dtype=a.dtype, device=a.device))
    z = z0.to(a)
    for _ in range(iters):
        z = _newton_step(solver, u, z, (1.0 - ratio) * d, lam)
    return z


def pool_heads(channel_scores: Tensor, num_heads: int, head_dim: int) -> Tensor:
    """Head score = mean of its ``head_dim`` input columns ``[h*D_h, (h+1)*D_h)`` of ``o_proj``."""
    if channel_scores.numel() != num_heads * head_dim:
        raise ValueError(f"{channel_scores.numel()} scores do not split into {num_heads} heads of {head_dim}")
    return channel_scores.reshape(num_heads, head_dim).mean(dim=1)


def pool_groups(head_scores: Tensor, num_kv_heads: int) -> Tensor:
    """KV-group score = mean of its query heads' scores (query heads ``[g*G, (g+1)*G)`` share KV head g)."""
    if head_scores.numel() % num_kv_heads:
        raise ValueError(f"{head_scores.numel()} heads do not split into {num_kv_heads} KV groups")
    return head_scores.reshape(num_kv_heads, -1).mean(dim=1)
