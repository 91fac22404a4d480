"""Eq. 11: the refit equals lstsq on the kept inputs and never increases the layer's output error."""

from __future__ import annotations

import pytest
import torch

from numprune.compensate import compensate, output_error
from numprune.errors import NumpruneError
from numprune.stats import GramAccumulator


def data(seed=0, n=300, d=10, out=6):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix  # correlated inputs
    return x, torch.randn(out, d, generator=g, dtype=torch.float64)


def test_equals_lstsq_on_kept_inputs():
    x, w = data()
    keep = torch.tensor([0, 2, 3, 7, 9])
    new = compensate(x.T @ x / len(x), w, keep, damp=0.0)
    ref = torch.linalg.lstsq(x[:, keep], x @ w.T).solution.T
    assert torch.allclose(new, ref, atol=1e-8)


def test_never_increases_output_error():
    for seed in range(5):
        x, w = data(seed)
        gram = x.T @ x / len(x)
        keep = torch.randperm(10, generator=torch.Generator().manual_seed(seed))[:4]
        plain = output_error(gram, w, w[:, keep], keep)
        for damp in (0.0, 0.01, 0.1):
            assert output_error(gram, w, compensate(gram, w, keep, damp), keep) <= plain + 1e-12


def test_keep_all_is_identity_and_dtype_preserved():
    x, w = data()
    w32 = w.float()
    out = compensate((x.T @ x).float(), w32, torch.arange(10))
    assert out.dtype == torch.float32 and torch.equal(out, w32)


def test_kept_rows_of_the_gram_give_the_same_refit():
    """Eq. 11 reads only ``G[K, :]``: the kept rows (in keep's order, any order) give the full-Gram refit; the
    accumulator's ``rows`` option gives exactly those rows; any other shape is refused."""
    x, w = data(3)
    keep = torch.tensor([7, 0, 4, 2, 9, 5])
    full = compensate(x.T @ x / len(x), w, keep, damp=0.1)
    acc = GramAccumulator("x", rows=keep)
    for part in x.split(100):
        acc.add_batch(part)
    st = acc.stats()
    assert st.gram.shape == (6, 10) and torch.equal(st.rows, keep)
    assert torch.allclose(st.gram, (x.T @ x / len(x))[keep], rtol=1e-12, atol=1e-12)
    assert torch.allclose(compensate(st.gram, w, keep, damp=0.1), full, rtol=1e-10, atol=1e-12)
    with pytest.raises(NumpruneError, match="only some rows"):
        _ = st.variance
    with pytest.raises(ValueError, match="kept rows"):
        compensate(st.gram[:5], w, keep)
