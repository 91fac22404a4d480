"""Registry of pruning methods; each is a ``Method`` (scoring rule plus repair) behind the same pipeline."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from numprune.errors import NumpruneError
from numprune.methods.base import LayerScores, Method
from numprune.methods.flap import Flap
from numprune.methods.llm_pruner import LLMPruner
from numprune.methods.numerical import Numerical
from numprune.methods.simple import Magnitude, Random, WandaSP
from numprune.methods.slimgpt import SlimGPT

METHODS: dict[str, Callable[[], Method]] = {
    "numerical": Numerical,
    "flap": Flap,
    "wanda-sp": WandaSP,
    "magnitude": Magnitude,
    "random": Random,
    "llm-pruner": LLMPruner,  # element-wise first-order Taylor (e1), every layer
    "llm-pruner-v": partial(LLMPruner, mode="v"),  # vector-wise Taylor
    "llm-pruner-range": partial(LLMPruner, layer_range=True),  # e1, LLM-Pruner's layer range
    "slimgpt": SlimGPT,
}

__all__ = ["METHODS", "LayerScores", "Method", "get_method"]


def get_method(name: str) -> Method:
    try:
        method = METHODS[name]()
    except KeyError:
        raise NumpruneError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None
    method.name = name  # variants registered with partial() report their registry name
    return method
