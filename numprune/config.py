"""``PruneConfig``: every choice of a pruning run, validated when it is made."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from numprune.errors import NumpruneError

Allocation = Literal["global", "uniform"]
HeadScaling = Literal["alpha", "none", "error", "split"]
Compensation = Literal["dense", "sequential", "none"]
# Uniform allocation: attention units (and channels) pruned per layer, int(r * n) as the official FLAP / Wanda-sp /
# LLM-Pruner codes do ("floor"), or round(r * n) ("nearest": SlimGPT's official code, and ours)
Rounding = Literal["floor", "nearest"]

# The one table of weight dtypes a user can name (CLI, configs, LightningModules).
DTYPE_NAMES = ("fp32", "fp16", "bf16")


def parse_dtype(name: str):
    """``fp32`` / ``fp16`` / ``bf16`` -> the torch dtype; a clear error for anything else."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise NumpruneError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return table[name]


@dataclass(frozen=True)
class PruneConfig:
    """Every choice of a pruning run (METHOD.md states each default and why). ``None`` fields take the method's
    default (``Method.resolve``); result rows record the resolved values (``numprune.methods.effective_options``)."""

    ratio: float
    method: str = "numerical"
    ratio_of: Literal["params", "units"] = "params"
    allocation: Allocation | None = None  # None: the method's default
    head_scaling: HeadScaling | None = None  # None: the method's default
    # head_scaling="error" (numprune.exchange): which removal order the error curves follow, and how many MLP
    # channels one greedy step removes (1: exact greedy; larger: fewer OBS updates, coarser curve; "split": the
    # channel curve's exact points)
    error_order: Literal["greedy", "numerical"] = "greedy"
    error_step: int = 8
    # ... and how layers compare: "layer" divides each layer's errors by its dense output energy (attention +
    # MLP), "absolute" compares raw errors (early layers, whose outputs are small, then lose most)
    error_norm: Literal["layer", "absolute"] = "layer"
    # GQA: prune query heads within KV groups (held-out best, docs/ablations.md), or whole KV groups ("groups")
    gqa: Literal["groups", "query"] = "query"
    min_heads: int = 1  # per layer: KV groups kept (gqa="groups"), or query heads kept per group ("query")
    min_channels: int = 1
    round_to: int = 1  # round kept MLP channels per layer to a multiple
    # statistics re-collected through the already pruned layers (numerical: held-out best), from the dense pass
    # (FLAP's bias), or none; None: the method's default
    compensation: Compensation | None = None
    # relative damping of refits; None: the method's (numerical 0.1, chosen on held-out PTB validation,
    # docs/ablations.md; slimgpt 0, its official command); stays None for methods that do not damp
    damp: float | None = None
    rounding: Rounding | None = None  # uniform allocation's per-layer unit counts; None: the method's
    lam: float | None = None  # None: hard-constraint limit
    iters: int = 1
    box: bool = False
    eps: float = 1e-5
    mask_only: bool = False
    device: str | None = None  # compute device for calibration (default: where the model is)
    calibration_mode: Literal["layerwise", "streaming"] = "layerwise"  # see numprune.passes.streaming_statistics
    calibration_batch: int = 8  # samples per forward in streaming calibration
    stats_cache_gib: float = 4.0  # keep dense statistics for compensation when they fit, else recompute
    offload_activations: bool = False  # calibration hidden states in CPU memory, one sample at a time on device
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        if not 0.0 <= self.ratio < 1.0:
            raise NumpruneError(f"ratio must be in [0, 1), got {self.ratio}")
        choices = {
            "ratio_of": ("params", "units"),
            "allocation": ("global", "uniform", None),
            "head_scaling": ("alpha", "none", "error", "split", None),
            "error_order": ("greedy", "numerical"),
            "error_norm": ("layer", "absolute"),
            "gqa": ("groups", "query"),
            "compensation": ("dense", "sequential", "none", None),
            "rounding": ("floor", "nearest", None),
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
        if self.error_step < 1:
            raise NumpruneError(f"error_step must be >= 1, got {self.error_step}")
        if self.calibration_batch < 1:
            raise NumpruneError(f"calibration_batch must be >= 1, got {self.calibration_batch}")
        if (self.damp is not None and self.damp < 0) or self.iters < 1 or (self.lam is not None and self.lam <= 0):
            raise NumpruneError("damp must be >= 0, iters >= 1 and lam > 0 (or None)")


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits a field annotation (the few forms PruneConfig uses)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return True  # checked against the allowed values, with a better message, in __post_init__
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _check_types(cfg: PruneConfig) -> None:
    hints = typing.get_type_hints(PruneConfig)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _accepts(hints[f.name], value):
            raise NumpruneError(f"{f.name} must be {_describe(hints[f.name])}, got {value!r}")


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def make_config(ratio: float, method: str = "numerical", **options: Any) -> PruneConfig:
    """``PruneConfig`` from user input: unknown option names and wrong types end in one ``NumpruneError``."""
    known = {f.name for f in dataclasses.fields(PruneConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise NumpruneError(f"unknown option {', '.join(unknown)}; PruneConfig fields: {', '.join(sorted(known))}")
    return PruneConfig(ratio=ratio, method=method, **options)
