"""Registry of pruning methods; each is a ``Method`` (scoring rule plus repair) behind the same pipeline."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

from numprune.config import PruneConfig, make_config
from numprune.errors import NumpruneError
from numprune.methods.base import LayerScores, Method, Transformed
from numprune.methods.depth import Depth
from numprune.methods.flap import Flap
from numprune.methods.llm_pruner import LLMPruner
from numprune.methods.numerical import Numerical
from numprune.methods.simple import Magnitude, MagSP, Random, WandaSP
from numprune.methods.slicegpt import SliceGPT
from numprune.methods.slimgpt import SlimGPT

METHODS: dict[str, Callable[[], Method]] = {
    "numerical": Numerical,
    "flap": Flap,
    "wanda-sp": WandaSP,
    "magnitude": Magnitude,
    "random": Random,
    "mag-sp": MagSP,  # FLAP's mag-sp: o_proj / down_proj column norms (not "magnitude": every owned weight)
    "llm-pruner": LLMPruner,  # the official command: element-wise Taylor (e1), layers [4, 30) of 32 scaled
    "llm-pruner-all": partial(LLMPruner, layer_range=False),  # e1, every layer
    "llm-pruner-v": partial(LLMPruner, mode="v"),  # vector-wise Taylor, the official layer range
    "slimgpt": SlimGPT,
    "slicegpt": SliceGPT,  # rotates and slices the residual stream (scoring="transform")
    "depth": Depth,  # removes whole decoder blocks by Block Influence (ShortGPT; scoring="transform")
}

__all__ = ["METHODS", "LayerScores", "Method", "Transformed", "effective_options", "get_method", "options_of"]


def get_method(name: str) -> Method:
    try:
        method = METHODS[name]()
    except KeyError:
        raise NumpruneError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None
    method.name = name  # variants registered with partial() report their registry name
    return method


# Fields that do not change what a run computes (how it reports progress, where activations are kept): left
# out of result rows' options.
NOT_RECORDED = ("ratio", "method", "progress", "offload_activations")


def effective_options(ratio: float, method: str = "numerical", **options: Any) -> dict[str, Any]:
    """Every ``PruneConfig`` field of a run after the method's defaults are filled in: what a result row
    records, so that no row depends on the defaults of the day it was written."""
    meth = get_method(method)
    cfg = meth.resolve(make_config(ratio, method, **options))
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RECORDED}
    settings = meth.settings()
    if settings:
        out["method_settings"] = settings
    used = {"error": ("error_order", "error_step", "error_norm"), "split": ("error_step",)}
    for name in ("error_order", "error_step", "error_norm"):  # the error rules' own options change nothing else
        if name not in used.get(out["head_scaling"], ()):
            out.pop(name)
    return out


def options_of(cfg: PruneConfig) -> dict[str, Any]:
    """``effective_options`` of a config: what its plan records."""
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("ratio", "method")}
    return effective_options(cfg.ratio, cfg.method, **given)
