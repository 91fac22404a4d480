"""Registry of pruning methods; each is a scoring rule plus a repair behind the same pipeline."""

from __future__ import annotations

from numprune.errors import NumpruneError
from numprune.methods.base import LayerScores, Method
from numprune.methods.numerical import Numerical

METHODS: dict[str, type] = {"numerical": Numerical}

__all__ = ["METHODS", "LayerScores", "Method", "get_method"]


def get_method(name: str) -> Method:
    try:
        return METHODS[name]()
    except KeyError:
        raise NumpruneError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None
