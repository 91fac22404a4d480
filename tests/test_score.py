"""Algorithm 1: Newton iterations == closed form == brute-force minimiser; ranking invariances."""

from __future__ import annotations

import inspect

import pytest
import torch
from scipy.optimize import minimize

from numprune.score import (
    _RidgeSolver,
    channel_interaction,
    newton_iterations,
    numerical_score,
    pool_groups,
    pool_heads,
)


def problem(d: int = 12, out: int = 7, n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.3, 2.0, d, dtype=torch.float64)
    return x.T @ x / n, torch.randn(out, d, generator=g, dtype=torch.float64)


def objective(z, a, r, lam):
    e = 1 - z
    return 0.5 * e @ a @ e + (0.0 if lam is None else 0.5 * lam * (z.sum() - r) ** 2)


@pytest.mark.parametrize("lam", [0.5, 10.0, None])
def test_newton_equals_closed_form_equals_brute_force(lam):
    gram, w = problem()
    ratio = 0.4
    closed = numerical_score(gram, w, ratio, lam=lam, eps=0.0)
    z0 = torch.rand(12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for t in (1, 5, 50):
        assert torch.allclose(newton_iterations(gram, w, ratio, lam, t, z0, eps=0.0), closed, atol=1e-9)
    a = channel_interaction(gram, w).numpy()
    r = (1 - ratio) * 12
    if lam is None:
        cons = [{"type": "eq", "fun": lambda z: z.sum() - r}]
        res = minimize(
            objective,
            z0.numpy(),
            args=(a, r, None),
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
    else:
        res = minimize(objective, z0.numpy(), args=(a, r, lam), method="BFGS", options={"gtol": 1e-12})
    assert torch.allclose(torch.from_numpy(res.x), closed, atol=1e-6)


def test_hard_limit_meets_constraint_and_is_limit_of_large_lam():
    gram, w = problem()
    z = numerical_score(gram, w, 0.25, eps=0.0)
    assert z.sum().item() == pytest.approx(0.75 * 12, abs=1e-9)
    assert torch.allclose(numerical_score(gram, w, 0.25, lam=1e9, eps=0.0), z, atol=1e-5)


def test_ranking_depends_only_on_A_inverse_ones():
    gram, w = problem()
    ranks = [numerical_score(gram * s, w, 0.3, lam=lam).argsort() for s in (1.0, 1e3) for lam in (0.1, 100.0, None)]
    for r in ranks[1:]:
        assert torch.equal(r, ranks[0])


def test_ranking_stable_when_ridge_changes_tenfold():
    # Ill-conditioned: two nearly dead channels and a pair of almost collinear ones.
    gram, w = problem(d=16, n=400, seed=4)
    gram[0, :] *= 1e-4
    gram[:, 0] *= 1e-4
    gram[5] = gram[6] * (1 + 1e-7)
    gram[:, 5] = gram[:, 6] * (1 + 1e-7)
    gram[5, 5] = gram[6, 6] * (1 + 2e-7)
    default = inspect.signature(numerical_score).parameters["eps"].default
    pruned = [
        set(numerical_score(gram, w, 0.5, eps=e).argsort()[:8].tolist()) for e in (default / 10, default, default * 10)
    ]
    assert pruned[0] == pruned[1] == pruned[2]
    assert 0 in pruned[1]  # the nearly dead channel goes


@pytest.mark.parametrize("lam", [None, 0.5, 10.0])
def test_box_variant_is_the_clamped_closed_form_for_every_T_and_start(lam):
    # Projected Newton on a quadratic: each step lands on the unconstrained minimiser, then the box clamps it.
    gram, w = problem()
    closed = numerical_score(gram, w, 0.5, lam=lam)
    assert closed.min() < 0  # the clamp is active on this problem, so the property is not vacuous
    for t in (1, 5, 50):
        for z0 in (None, torch.rand(12, generator=torch.Generator().manual_seed(t), dtype=torch.float64)):
            z = numerical_score(gram, w, 0.5, lam=lam, box=True, iters=t, z0=z0)
            assert torch.allclose(z, closed.clamp(0.0, 1.0), atol=1e-12)


def test_dead_channel_scores_lowest():
    gram, w = problem()
    gram[3, :] = gram[:, 3] = 0.0
    z = numerical_score(gram, w, 0.3, eps=1e-6)
    assert z.argmin() == 3


def test_bad_ratio_rejected():
    gram, w = problem()
    with pytest.raises(ValueError, match="ratio"):
        numerical_score(gram, w, 1.0)


def test_pool_heads_uses_half_open_ranges_and_groups():
    scores = torch.arange(8.0)  # 4 heads of head_dim 2
    heads = pool_heads(scores, 4, 2)
    assert heads.tolist() == [0.5, 2.5, 4.5, 6.5]
    assert pool_groups(heads, 2).tolist() == [1.5, 5.5]


def test_ridge_retries_each_add_their_ridge_to_the_plain_diagonal():
    """The ridge goes on ``A``'s own diagonal: a retry (the first ridge was too small) must give
    ``A + rel * mean(diag A) I`` exactly, not the sum of the ridges tried. An indefinite ``A`` whose smallest
    eigenvalue is ~-5e-10 x mean(diag) fails at eps=1e-10 and factorises at 1e-9."""
    plain = torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-9]], dtype=torch.float64)
    a = plain.clone()
    solver = _RidgeSolver(a, 1e-10)
    assert solver.eps == pytest.approx(1e-9)
    expected = plain.clone()
    expected.diagonal().add_(solver.eps * plain.diagonal().mean())
    assert torch.equal(solver.a, expected)
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert torch.allclose(solver.a @ solver.solve(b), b, rtol=1e-5, atol=1e-5)
