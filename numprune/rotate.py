"""SliceGPT's math (Ashkboos et al., ICLR 2024, Sec. 3), as small pure functions on tensors.

Convention of ``nn.Linear``: a layer computes ``x W^T`` on row vectors ``x``. A *basis* ``Q`` is ``[D, k]`` with
orthonormal columns (the first ``k`` principal directions of the residual stream at one point); the residual
``x`` is represented there by ``x Q`` (``k`` wide), and by ``x Q Q^T`` back in the dense coordinates.

- a layer that *reads* the residual (q/k/v, gate/up, lm_head) gets ``W Q``: ``(x Q)(W Q)^T = x Q Q^T W^T``;
  so do the embedding's rows, which *are* residual vectors (``E Q``);
- a layer that *writes* it (o_proj, down_proj) gets ``Q^T W``: its output lands in ``x Q``;
- the residual path itself gets ``Q_out^T Q_in`` (the paper's ``Q_l^T Q_{l+1}``, as a ``Linear`` weight);
- an RMSNorm weight ``g`` is folded into the readers first, ``W diag(g)``: the weightless RMSNorm left behind
  commutes with any rotation (it only divides by the norm of ``x``).

With ``k = D`` every ``Q`` is square and orthogonal and the model computes the same function; slicing keeps the
first ``k`` columns. Only torch is imported.
"""

from __future__ import annotations

import torch
from torch import Tensor


def principal_basis(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``[D]`` and eigenvectors ``[D, D]`` (columns) of a second-moment matrix ``X^T X / n``, by
    decreasing eigenvalue: uncentred PCA, as SliceGPT's ``pca_calc`` (its damping ``0.01 mean(diag)`` shifts
    every eigenvalue by the same amount and leaves the basis and its order unchanged, so it is not applied).
    float64."""
    values, vectors = torch.linalg.eigh(gram.double())
    order = torch.argsort(values, descending=True)
    return values[order], vectors[:, order]


def kept_fraction(values: Tensor, k: int) -> float:
    """Share of the residual's mean squared norm in the first ``k`` principal directions (what a slice keeps)."""
    return float(values[:k].sum() / values.sum())


def fold_norm(weight: Tensor, norm_weight: Tensor) -> Tensor:
    """``W diag(g)``: a reader of ``g * rmsnorm(x)`` becomes a reader of the weightless ``rmsnorm(x)``."""
    return weight * norm_weight.to(weight)[None, :]


def read_rotated(weight: Tensor, basis: Tensor) -> Tensor:
    """``[out, D] -> [out, k]``: ``W Q`` for a layer that reads the residual in the basis ``Q``."""
    return weight @ basis.to(weight)


def write_rotated(weight: Tensor, basis: Tensor) -> Tensor:
    """``[D, in] -> [k, in]`` (or a ``[D]`` bias -> ``[k]``): ``Q^T W`` for a layer that writes the residual."""
    return basis.to(weight).T @ weight


def shortcut(basis_in: Tensor, basis_out: Tensor) -> Tensor:
    """``[k_out, k_in]`` weight of the residual path from basis ``Q_in`` to ``Q_out``: ``Q_out^T Q_in``."""
    return basis_out.T @ basis_in.to(basis_out)
