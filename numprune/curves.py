"""Refit-error curves along a fixed ranking (``head_scaling="split"``, ``numprune.select.best_split``).

For one output projection (``W = weight.T`` ``[D, out]``, damped Gram ``Gd``, ``H = Gd^{-1}``) and a removal
order of its input columns, removing the first ``m`` columns ``S`` and refitting the others leaves the damped
objective ``E_m = tr(W_S^T (H_SS)^{-1} W_S)`` (block OBS, ``numprune.exchange``). With the columns permuted into
that order and ``H = L L^T`` (Cholesky), ``H_SS = L_m L_m^T`` for the leading ``m x m`` block ``L_m`` of ``L``,
so with ``Z = L^{-1} W`` (row ``i`` reads rows ``<= i`` only)

    E_m = sum_{i < m} ||Z_i||^2,      D_m = W - W'_m = H_{:,S} H_SS^{-1} W_S = L_{:, :m} Z_{:m},

and ``||D_m||^2 = sum_{i, j < m} P_ij (z_i . z_j)`` with ``P = L^T L``: every prefix of the order at once,
instead of one OBS update per step (``exchange.removal_curve``). Its increments are row sums of the lower
triangle, ``||D_m||^2 - ||D_{m-1}||^2 = 2 z_i . (tril(P, -1) Z)_i + P_ii ||z_i||^2`` (``i = m - 1``): one
triangular product, no ``k x k`` matrix of terms. No inverse is formed: with ``J`` the reversal and
``J Gd_perm J = M M^T`` (Cholesky, ``M`` lower), ``Gd_perm = (J M J)(J M^T J)``, so ``L^{-1} = J M^T J`` (lower),
``Z = (J M^T J) W`` is a triangular product and ``P = (L^{-1} L^{-T})^{-1}`` is ``cholesky_inverse`` of
``L^{-1}``: one Cholesky, one inverse from its factor and two triangular products per projection
(``linalg.tril_matmul``, 10/16 of a GEMM each). At 1536 columns, 576 outputs on this CPU: 0.40 s -> 0.31 s
per curve against full products and the ``k x k`` terms, the same values to 1e-15; the inverse, a Cholesky
of it and a triangular solve before that were 1.3-1.9x slower again.
"""

from __future__ import annotations

import torch
from torch import Tensor

from numprune.adapters.base import LayerGeometry
from numprune.exchange import attention_steps, damping, ridged_cholesky
from numprune.linalg import tril_matmul


def ordered_refit_errors(gram: Tensor, weight: Tensor, cols: Tensor, *, damp: float, undamped: bool = False) -> Tensor:
    """Refit errors ``[k + 1]`` after removing the first ``m`` of the ``k`` columns ``cols``, for every ``m``.

    ``gram``: ``[D, D]`` Gram matrix of the projection's inputs; ``weight``: ``[out, D]``; ``damp``: relative
    to ``mean(diag G)``, fixed at the full set's diagonal (``exchange.damping``). ``undamped``: the output
    errors ``tr(D^T G D)`` of the damped refits (the objective less ``gamma ||D||^2``).
    """
    k, d = cols.numel(), gram.shape[0]
    rest = torch.ones(d, dtype=torch.bool)
    rest[cols.cpu()] = False
    rev = torch.cat([cols.cpu(), rest.nonzero().squeeze(1)]).flip(0).to(gram.device)
    # At most two D x D float64 matrices at a time (and Z): the damped, permuted Gram and its factor, the
    # factor's flip, then L^{-1} and P.
    gamma = damping(gram, damp)
    perm = gram.to(torch.float64)[rev[:, None], rev]  # the damped Gram in the reversed order
    perm.diagonal().add_(gamma)
    m = ridged_cholesky(perm)
    del perm
    linv = m.flip(0, 1).T  # L^{-1}, lower (module docstring)
    del m
    w = weight.index_select(1, cols.to(weight.device)).to(device=gram.device, dtype=torch.float64).T  # W, in order
    z = tril_matmul(linv[:k, :k], w)  # Z = L^{-1} W; row i reads rows <= i only
    del w
    sq = (z**2).sum(dim=1)
    zero = z.new_zeros(1)
    errors = torch.cat([zero, sq.cumsum(0)])
    if not undamped:
        return errors.cpu()
    p = torch.cholesky_inverse(linv)[:k, :k]  # L^T L
    del linv
    steps = 2 * (tril_matmul(p, z, diagonal=-1) * z).sum(dim=1) + p.diagonal() * sq  # ||D_m||^2 increments
    return (errors - gamma * torch.cat([zero, steps.cumsum(0)])).cpu()


# fmt: off
def layer_error_curves(
    o_gram: Tensor, o_weight: Tensor, down_gram: Tensor, down_weight: Tensor, geo: LayerGeometry,
    heads_order: Tensor, channels_order: Tensor, *, gqa: str, damp: float, per_step: int = 1,
) -> tuple[Tensor, Tensor]:
    # fmt: on
    """Output errors of a layer's damped refits along a fixed ranking: ``[n_attn + 1]`` after removing the ``k``
    lowest attention units of ``attention_units(heads_order)``, and ``[I + 1]`` after the ``m`` lowest channels
    of ``channels_order`` (ties: stable order), so ``numprune.select.best_split`` can add them.

    The channel curve is exact every ``per_step`` channels and linear between (``PruneConfig.error_step``, 8 by
    default: the stride the ablation rows were made with; 1 is exact everywhere, at the same cost)."""
    units, _, order, _ = attention_steps(geo, gqa, heads_order)
    assert order is not None  # an order was given
    steps = units[torch.tensor(order)].reshape(len(order), -1)  # [steps, columns a step removes]
    attn = ordered_refit_errors(o_gram, o_weight, steps.reshape(-1), damp=damp, undamped=True)[:: steps.shape[1]]
    exact = ordered_refit_errors(down_gram, down_weight, channels_order.argsort(stable=True), damp=damp, undamped=True)
    done = torch.arange(0, geo.intermediate + per_step, per_step).clamp(max=geo.intermediate)
    m = torch.arange(geo.intermediate + 1)
    j = (torch.searchsorted(done, m, right=True) - 1).clamp(max=done.numel() - 2)
    frac = (m - done[j]).to(torch.float64) / (done[j + 1] - done[j]).to(torch.float64)
    return attn, exact[done[j]] + frac * (exact[done[j + 1]] - exact[done[j]])
