"""What a pruning method contributes to the one pipeline: per-layer scores, a default allocation, a repair."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

from numprune.adapters.base import LayerGeometry
from numprune.calibrate import InputStats

if TYPE_CHECKING:
    from numprune.prune import PruneConfig


@dataclass(frozen=True)
class LayerScores:
    """One score per query head (``[H]``) and per MLP channel (``[I]``) of a layer; low = prune first."""

    heads: Tensor
    channels: Tensor


class Method(Protocol):
    name: str
    default_allocation: str  # "global" or "uniform"
    adds_bias: bool  # whether repair() returns biases for o_proj / down_proj
    # Optional members the pipeline looks for (``hasattr`` / ``getattr``):
    #   default_head_scaling: str = "alpha"     head scaling when PruneConfig.head_scaling is None
    #   repair_uses_stats: bool = True           False: repair is a plain slice, no statistics pass needed
    #   score_model(model, adapter, calibration, cfg) -> list[LayerScores]
    #       replaces the per-layer dense statistics pass (methods that need gradients: LLM-Pruner)
    #   layer_ratios(ratio, num_layers) -> list[float]
    #       per-layer ratios for uniform allocation (SlimGPT's log-increasing ratio, LLM-Pruner's layer range)

    def score(
        self,
        stats: dict[str, InputStats],
        o_weight: Tensor,
        down_weight: Tensor,
        geo: LayerGeometry,
        cfg: PruneConfig,
    ) -> LayerScores:
        """Scores of one layer from the dense calibration statistics of its ``o_proj`` / ``down_proj`` inputs."""

    def repair(
        self, stats: InputStats | None, weight: Tensor, keep: Tensor, cfg: PruneConfig
    ) -> tuple[Tensor, Tensor | None]:
        """New ``[out, len(keep)]`` weight (and optional bias) of a pruned output projection."""
