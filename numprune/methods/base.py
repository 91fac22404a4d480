"""The contract between a pruning method and the one pipeline (``numprune.prune``).

A method is a subclass of ``Method``: class attributes say how it scores and repairs, methods compute the
scores and the repaired weights. The pipeline reads nothing else, and every member has a default that is
right for most methods, so a new method overrides only what differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor, nn

from numprune.adapters.base import LayerGeometry
from numprune.calibrate import InputStats
from numprune.config import Allocation, Compensation, HeadScaling, PruneConfig, Rounding
from numprune.plan import LayerPlan

if TYPE_CHECKING:
    from numprune.adapters.base import Adapter

# Where a method's scores come from:
#   "dense"      per-layer statistics of the dense model, from one dense pass (any allocation: a global
#                ranking needs every layer's scores before any mask is chosen)
#   "sequential" per-layer statistics through the already pruned earlier layers (per-layer allocation only:
#                each layer is scored, selected and repaired before the next one sees its inputs)
#   "model"      the method's own pass over the whole model (``score_model``: gradients, weights alone)
#   "transform"  the method rewrites the model itself in one pass (``transform_``: SliceGPT's rotations, whole
#                blocks removed); ``prune_`` calls it instead of the selection, repair and surgery below, and
#                ``plan_pruning`` / ``apply_plan_`` refuse it (there is no head/channel plan to split)
Scoring = Literal["dense", "sequential", "model", "transform"]
# What the repair does: "refit" new weights of the kept columns from the statistics (Eq. 11, OBS), "bias" a
# bias that restores the mean output (FLAP), "slice" nothing (keep the columns as they are).
Repair = Literal["refit", "bias", "slice"]


@dataclass(frozen=True)
class LayerScores:
    """One score per query head (``[H]``) and per MLP channel (``[I]``) of a layer; low = prune first."""

    heads: Tensor
    channels: Tensor
    # head_scaling="split" (numprune.curves.layer_error_curves): the layer's cumulative refit errors along
    # these scores, per attention unit of the selection ([n_attn + 1]) and per channel ([I + 1])
    head_errors: Tensor | None = None
    channel_errors: Tensor | None = None


@dataclass
class Transformed:
    """What a ``transform_`` did: per-layer kept heads/channels of the layers that remain, the ``achieved``
    counts (``params_ratio`` and the attention+MLP totals, heads/channels pruned), and the transform's own
    record (``kind`` and what it removed or sliced) for ``PruningPlan.transform``."""

    layers: list[LayerPlan]
    achieved: dict[str, float | int]
    transform: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class of every registered method (``numprune.methods.METHODS``)."""

    name: str = ""  # the registry name (an instance of a registered variant carries the variant's name)
    default_allocation: ClassVar[Allocation] = "global"  # when PruneConfig.allocation is None
    default_head_scaling: ClassVar[HeadScaling] = "alpha"  # when PruneConfig.head_scaling is None
    default_compensation: ClassVar[Compensation] = "none"  # when PruneConfig.compensation is None
    default_damp: ClassVar[float | None] = None  # when PruneConfig.damp is None (None: the method does not damp)
    default_rounding: ClassVar[Rounding] = "nearest"  # when PruneConfig.rounding is None
    scoring: ClassVar[Scoring] = "dense"
    # whether head_scaling="error" (its scores replace the method's) and "split" (refit-error curves) apply
    error_scores: ClassVar[bool] = False
    repair_kind: ClassVar[Repair] = "slice"
    # whether ``repair`` reads only the kept rows ``G[keep, :]`` of the Gram matrix (the sequential pass then
    # accumulates only those: ``X_K^T X`` costs K/in of ``X^T X``)
    repair_reads_kept_rows: ClassVar[bool] = False
    # scoring "sequential": the MLP is scored on inputs through this layer's already pruned attention (SlimGPT
    # prunes attention, re-runs the layer, then prunes the MLP); the pass calls score_heads, then score_channels
    mlp_after_attention: ClassVar[bool] = False

    def resolve(self, cfg: PruneConfig) -> PruneConfig:
        """``cfg`` with every ``None`` field that has a method default filled in: what the run computes with."""
        return dataclasses.replace(
            cfg,
            allocation=cfg.allocation or self.default_allocation,
            head_scaling=self.head_scaling(cfg),
            compensation=self.compensation(cfg),
            damp=self.default_damp if cfg.damp is None else cfg.damp,
            rounding=cfg.rounding or self.default_rounding,
        )

    def settings(self) -> dict[str, Any]:
        """Fixed settings of this method (or registered variant) that are not ``PruneConfig`` fields (LLM-Pruner's
        Taylor samples, SlimGPT's schedule): recorded in every row's options as ``method_settings``."""
        return {}

    def score(
        self, stats: dict[str, InputStats], o_weight: Tensor, down_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig
    ) -> LayerScores:
        """Scores of one layer from the statistics of its ``o_proj`` / ``down_proj`` inputs
        (``scoring`` "dense" or "sequential")."""
        raise NotImplementedError(f"{self.name} scores with scoring={self.scoring!r}, not per layer")

    def score_heads(self, stats: InputStats, o_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig) -> Tensor:
        """Query-head scores of one layer from its ``o_proj`` input statistics (``mlp_after_attention``)."""
        raise NotImplementedError(f"{self.name} scores heads and channels together")

    def score_channels(
        self, stats: InputStats, down_weight: Tensor, geo: LayerGeometry, cfg: PruneConfig, n_pruned: int
    ) -> Tensor:
        """MLP-channel scores of one layer (``mlp_after_attention``), knowing that ``n_pruned`` channels go: the
        first ``n_pruned`` in score order are the method's choice."""
        raise NotImplementedError(f"{self.name} scores heads and channels together")

    def score_model(
        self, model: nn.Module, adapter: Adapter, calibration: Tensor, cfg: PruneConfig
    ) -> list[LayerScores]:
        """Scores of every layer from the method's own pass over the model (``scoring == "model"``)."""
        raise NotImplementedError(f"{self.name} scores per layer (scoring={self.scoring!r})")

    def transform_(self, model: nn.Module, adapter: Adapter, calibration: Tensor, cfg: PruneConfig) -> Transformed:
        """Rewrite ``model`` in place to remove ``cfg.ratio`` of its attention+MLP parameters
        (``scoring == "transform"``); ``prune_`` wraps the result into the ``PruningPlan``."""
        raise NotImplementedError(f"{self.name} prunes heads and channels (scoring={self.scoring!r})")

    def layer_ratios(self, ratio: float, num_layers: int) -> list[float] | None:
        """Per-layer ratios for per-layer allocation (None: every layer prunes ``ratio``)."""
        return None

    def repair(
        self, stats: InputStats | None, weight: Tensor, keep: Tensor, cfg: PruneConfig
    ) -> tuple[Tensor, Tensor | None]:
        """New ``[out, len(keep)]`` weight (and bias, or None) of a pruned output projection. ``stats`` is None
        when ``needs_stats(cfg)`` is False."""
        return weight[:, keep.to(weight.device)], None

    def needs_stats(self, cfg: PruneConfig) -> bool:
        """Whether the repair reads calibration statistics: the one place that decides it."""
        return self.repair_kind != "slice" and self.compensation(cfg) != "none"

    def adds_bias(self, cfg: PruneConfig) -> bool:
        """Whether the repaired output projections get a bias."""
        return self.repair_kind == "bias" and self.compensation(cfg) != "none"

    def head_scaling(self, cfg: PruneConfig) -> HeadScaling:
        """The exchange rate a config runs with. ``split`` re-divides the per-layer budgets of the global ranking;
        under ``uniform`` allocation (every layer prunes its share of each kind, head scaling changes nothing)
        a ``split`` default gives way to ``alpha``, and ``split`` runs only when asked."""
        if cfg.head_scaling is not None:
            return cfg.head_scaling
        if self.default_head_scaling == "split" and (cfg.allocation or self.default_allocation) != "global":
            return "alpha"
        return self.default_head_scaling

    def compensation(self, cfg: PruneConfig) -> Compensation:
        """The compensation a config runs with (its own, or the method's default)."""
        return cfg.compensation or self.default_compensation

    def check(self, cfg: PruneConfig) -> None:
        """Refuse a configuration this method cannot run (before any model work)."""
        from numprune.errors import NumpruneError

        if self.scoring == "transform":
            refused = {"mask_only": cfg.mask_only, "ratio_of='units'": cfg.ratio_of == "units"}
            refused["calibration_mode='streaming'"] = cfg.calibration_mode == "streaming"
            bad = [name for name, on in refused.items() if on]
            if bad:
                raise NumpruneError(f"{self.name} rewrites the model in one layer-by-layer pass: {bad[0]} is refused")
            return
        allocation = cfg.allocation or self.default_allocation
        scaling = self.head_scaling(cfg)
        if scaling in ("error", "split") and not self.error_scores:
            raise NumpruneError(
                f"head_scaling={scaling!r} uses the refit error of numerical's compensation; {self.name} has its "
                "own scores: use head_scaling='alpha' or 'none'"
            )
        if self.scoring == "sequential" and allocation == "global":
            raise NumpruneError(
                f"{self.name} scores each layer through the already pruned ones: it needs allocation='uniform'"
            )
        if self.scoring == "sequential" and self.compensation(cfg) == "dense":
            raise NumpruneError(
                f"{self.name} repairs with the statistics it scored with (sequential): use compensation="
                "'sequential' or 'none'"
            )
