"""``PruneConfig``: every choice of a pruning run, validated when it is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from numprune.errors import NumpruneError


@dataclass(frozen=True)
class PruneConfig:
    """Every choice of a pruning run (METHOD.md states each default and why)."""

    ratio: float
    method: str = "numerical"
    ratio_of: Literal["params", "units"] = "params"
    allocation: Literal["global", "uniform"] | None = None  # None: the method's default
    head_scaling: Literal["alpha", "none"] | None = None  # None: the method's default
    # GQA: prune query heads within KV groups (held-out best, docs/ablations.md), or whole KV groups ("groups")
    gqa: Literal["groups", "query"] = "query"
    min_heads: int = 1  # per layer: KV groups kept (gqa="groups"), or query heads kept per group ("query")
    min_channels: int = 1
    round_to: int = 1  # round kept MLP channels per layer to a multiple
    # statistics re-collected through the already pruned layers (held-out best), or from the dense pass
    compensation: Literal["dense", "sequential", "none"] = "sequential"
    damp: float = 0.1  # chosen on held-out PTB validation (docs/ablations.md); 0.01 = SparseGPT convention
    lam: float | None = None  # None: hard-constraint limit
    iters: int = 1
    box: bool = False
    eps: float = 1e-5
    mask_only: bool = False
    device: str | None = None  # compute device for calibration (default: where the model is)
    calibration_mode: Literal["layerwise", "streaming"] = "layerwise"  # see numprune.passes.streaming_statistics
    calibration_batch: int = 8  # samples per forward in streaming calibration
    stats_cache_gib: float = 4.0  # keep dense statistics for compensation when they fit, else recompute
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise NumpruneError(f"ratio must be in [0, 1), got {self.ratio}")
        choices = {
            "ratio_of": ("params", "units"),
            "allocation": ("global", "uniform", None),
            "head_scaling": ("alpha", "none", None),
            "gqa": ("groups", "query"),
            "compensation": ("dense", "sequential", "none"),
            "calibration_mode": ("layerwise", "streaming"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise NumpruneError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.min_heads < 0 or self.min_channels < 0 or self.round_to < 1:
            raise NumpruneError("min_heads and min_channels must be >= 0 and round_to >= 1")
        if self.calibration_mode == "streaming" and self.compensation == "sequential":
            raise NumpruneError(
                "sequential compensation re-propagates layer by layer: with calibration_mode='streaming' set "
                "compensation='dense' (or 'none')"
            )
        if self.calibration_batch < 1:
            raise NumpruneError(f"calibration_batch must be >= 1, got {self.calibration_batch}")
        if self.damp < 0 or self.iters < 1 or (self.lam is not None and self.lam <= 0):
            raise NumpruneError("damp must be >= 0, iters >= 1 and lam > 0 (or None)")
