"""SlimGPT (Ling et al., NeurIPS 2024) as its official command runs (README: ``--percdamp 0 --non_uniform
--non_uniform_strategy log_increase --min_sparsity 0.0625 --max_sparsity 0.25`` for 20%; the code as derived in
aden9460/EdgeVAR ``slimgpt_pub/slim_utils/slimgpt.py``): structured Optimal Brain Surgeon on the input columns
of ``o_proj`` / ``down_proj``, layer by layer.

Each layer's Hessian ``H = X^T X / n`` comes from the inputs through the already pruned layers (scoring
"sequential"), attention first: its heads (GQA: whole KV groups with ``gqa="groups"``) go one at a time, each
step removing the alive head of least *grouped-Cholesky* error ``sum_{j in head} ||W[:, j]||^2 / L_jj^2``
(``L`` = Cholesky factor of the head's block of ``H^{-1}`` restricted to the alive columns; SlimGPT's estimate of
the exact block error ``tr(W_S (H^{-1})_SS^{-1} W_S^T)``) with the OBS update

    W <- W - W_S (H^{-1})_SS^{-1} (H^{-1})_S:          H^{-1} <- H^{-1} - (H^{-1})_:S (H^{-1})_SS^{-1} (H^{-1})_S:

(the downdate is the inverse of ``H`` on the alive columns, which the official code refactors each step). The
layer is then re-run through its pruned attention and the MLP's ``down_proj`` columns go the same way with the
single-column error ``||W[:, j]||^2 / (H^{-1})_jj``, in batches of the official dynamic group size (first
``(n - 512) // 2``, the excess over 512 halving each step, at least 64, at most 1024, until ``n`` are gone).
A unit's score is its removal position, so the layer's selection takes exactly the greedy choice.

Damping: ``damp=0.0`` (``--percdamp 0``); a Hessian that is singular then gets the smallest jitter that makes its
Cholesky succeed, ``1e-10 * mean(diag H)`` growing x10 (the official code would stop there). Dead columns (zero
input) cost nothing, as the official code. Repair: the closed-form OBS update of the chosen set, equal to the
sequence of greedy updates. Per-layer ratios: ``min + (max - min) ln(1 + l) / ln(L)`` (``ln 32`` for LLaMA-7B's
32 layers in the code: the last layer reaches ``max``); other ratios than the README's 20% keep its
``min : max = 1 : 4`` and scale both so that the layers' mean is the ratio. Units per layer: ``round(r * n)``
as the official code (``rounding="nearest"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from numprune.adapters.base import LayerGeometry
from numprune.calibrate import InputStats
from numprune.config import PruneConfig
from numprune.errors import NumpruneError
from numprune.methods.base import LayerScores, Method
from numprune.select import gqa_mode, unit_count

JITTER = 1e-10  # first relative jitter tried when an undamped Hessian is singular
MIN_TO_MAX = 0.25  # the README's min_sparsity / max_sparsity = 0.0625 / 0.25


def damped_inverse(gram: Tensor, damp: float) -> Tensor:
    """``(H + damp * mean(diag H) I)^{-1}`` in float64, dead channels' diagonal set to 1; a singular ``H`` gets
    the smallest jitter ``1e-10 * 10^k * mean(diag H)`` with which its Cholesky succeeds."""
    h = gram.to(torch.float64).clone()
    dead = (h.diagonal() == 0).nonzero().squeeze(1)
    h[dead, dead] = 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    scale = h.diagonal().mean()
    h = h + damp * scale * eye if damp > 0 else h
    jitter = 0.0
    for _ in range(14):
        chol, info = torch.linalg.cholesky_ex(h + jitter * scale * eye if jitter else h)
        if int(info) == 0:
            return torch.cholesky_inverse(chol)
        jitter = JITTER if jitter == 0 else jitter * 10
    raise NumpruneError(f"slimgpt: the Hessian is not positive definite even with jitter {jitter:g}; set damp > 0")


def obs_remove_(w: Tensor, hinv: Tensor, cols: Tensor) -> None:
    """Remove columns ``cols`` of ``w`` ([out, in], float64) with the OBS update; downdate ``hinv`` in place."""
    block = torch.linalg.inv(hinv[cols][:, cols])  # Hinv_SS^{-1}
    rows = hinv[cols]  # Hinv_S:
    w -= w[:, cols] @ block @ rows
    hinv -= rows.T @ block @ rows
    w[:, cols] = 0.0


def grouped_cholesky_error(w: Tensor, hinv: Tensor, cols: Tensor) -> Tensor:
    """SlimGPT's head error: ``sum_j ||w[:, j]||^2 / L_jj^2``, ``L`` the Cholesky factor of ``hinv[cols, cols]``."""
    diag = torch.linalg.cholesky(hinv[cols][:, cols]).diagonal()
    return (w[:, cols].pow(2).sum(dim=0) / diag.pow(2)).sum()


def _working_copy(gram: Tensor, weight: Tensor, damp: float) -> tuple[Tensor, Tensor]:
    w = weight.to(device=gram.device, dtype=torch.float64).clone()
    w[:, gram.diagonal() == 0] = 0.0  # a dead column costs nothing to remove
    return w, damped_inverse(gram, damp)


def head_order(gram: Tensor, weight: Tensor, units: list[Tensor], damp: float) -> Tensor:
    """Removal position of every head unit (a tensor of column indices) under SlimGPT's one-at-a-time greedy."""
    w, hinv = _working_copy(gram, weight, damp)
    position = torch.zeros(len(units), dtype=torch.float64)
    alive = list(range(len(units)))
    for step in range(len(units) - 1):
        errors = torch.stack([grouped_cholesky_error(w, hinv, units[u]) for u in alive])
        best = alive[int(errors.argmin())]
        position[best] = step
        obs_remove_(w, hinv, units[best])
        alive.remove(best)
    position[alive[0]] = len(units) - 1
    return position


def group_sizes(n: int) -> list[int]:
    """SlimGPT's dynamic group size: the batches in which ``n`` MLP columns are removed."""
    sizes: list[int] = []
    block = (n - 512) // 2
    while sum(sizes) < n:
        sizes.append(min(n - sum(sizes), max(block, 64), 1024))
        block = (block - 512) // 2
    return sizes


def channel_order(gram: Tensor, weight: Tensor, n_pruned: int, damp: float) -> Tensor:
    """Removal position of every column: the ``n_pruned`` SlimGPT removes first (in its batches), then the others
    by their remaining error."""
    w, hinv = _working_copy(gram, weight, damp)
    d = w.shape[1]
    position = torch.zeros(d, dtype=torch.float64)
    alive = torch.ones(d, dtype=torch.bool, device=w.device)

    def errors() -> Tensor:
        diag = hinv.diagonal().clamp_min(torch.finfo(torch.float64).tiny)
        return torch.where(alive, w.pow(2).sum(dim=0) / diag, torch.inf)

    step = 0
    for size in group_sizes(n_pruned):
        take = errors().argsort(stable=True)[:size]
        position[take.cpu()] = torch.arange(step, step + size, dtype=torch.float64)
        step += size
        obs_remove_(w, hinv, take)
        alive[take] = False
    rest = errors().argsort(stable=True)[: d - step]
    position[rest.cpu()] = torch.arange(step, d, dtype=torch.float64)
    return position


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
    """SlimGPT's ``min + (max - min) ln(1 + l) / ln(L)`` with ``min = max / 4`` and mean ``ratio``."""
    if ratio == 0 or num_layers == 1:
        return [ratio] * num_layers
    shape = [MIN_TO_MAX + (1 - MIN_TO_MAX) * math.log(1 + i) / math.log(num_layers) for i in range(num_layers)]
    top = ratio * num_layers / sum(shape)
    if top > cap:
        raise NumpruneError(f"slimgpt's schedule at ratio {ratio} prunes {top:.2f} of the last layer (at most {cap})")
    return [top * s for s in shape]


class SlimGPT(Method):
    name = "slimgpt"
    default_allocation = "uniform"
    default_compensation = "sequential"
    default_damp = 0.0
    default_rounding = "nearest"
    scoring = "sequential"
    mlp_after_attention = True
    repair_kind = "refit"

    def settings(self) -> dict[str, object]:
        return {
            "schedule": "log_increase, min:max = 1:4",
            "head_error": "grouped_cholesky",
            "mlp_batches": "dynamic_group_size",
        }

    def score_heads(self, stats: InputStats, o_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig) -> Tensor:
        cols = torch.arange(geo.num_heads * geo.head_dim).reshape(geo.num_heads, geo.head_dim)
        damp = self._damp(cfg)
        if gqa_mode(cfg.gqa, geo) == "groups":  # one OBS unit per KV group: the columns of its G query heads
            units = list(cols.reshape(geo.num_kv_heads, -1))
            return head_order(stats.gram, o_weight, units, damp).repeat_interleave(geo.group_size)
        return head_order(stats.gram, o_weight, list(cols), damp)

    def score_channels(
        self, stats: InputStats, down_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig, n_pruned: int
    ) -> Tensor:
        return channel_order(stats.gram, down_weight, n_pruned, self._damp(cfg))

    def score(
        self, stats: dict[str, InputStats], o_weight: Tensor, down_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig
    ) -> LayerScores:
        n_pruned = unit_count(cfg.ratio * geo.intermediate, "nearest")
        return LayerScores(
            heads=self.score_heads(stats["o_proj"], o_weight, geo, cfg),
            channels=self.score_channels(stats["down_proj"], down_weight, geo, cfg, n_pruned),
        )

    def repair(
        self, stats: InputStats | None, weight: Tensor, keep: Tensor, cfg: PruneConfig
    ) -> tuple[Tensor, Tensor | None]:
        if stats is None:
            return super().repair(stats, weight, keep, cfg)
        return obs_update(stats.gram, weight, keep, self._damp(cfg)), None

    def layer_ratios(self, ratio: float, num_layers: int) -> list[float]:
        return log_increasing_ratios(ratio, num_layers)

    def _damp(self, cfg: PruneConfig) -> float:
        return float(self.default_damp if cfg.damp is None else cfg.damp)
