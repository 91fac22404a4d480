"""numprune: numerical pruning of autoregressive models (Shen, Song et al., AAAI 2025).

The public names are imported on first use (PEP 562), so ``import numprune.score`` (the pure math) does not
load transformers, Lightning or lm-eval.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "LayerPlan": "numprune.plan",
    "NumpruneError": "numprune.errors",
    "PruneConfig": "numprune.config",
    "PruningPlan": "numprune.plan",
    "apply_plan_": "numprune.prune",
    "compensate": "numprune.compensate",
    "export_gguf": "numprune.export.gguf",
    "load_pruned": "numprune.save",
    "numerical_score": "numprune.score",
    "plan_pruning": "numprune.prune",
    "prune_": "numprune.prune",
    "save_pruned": "numprune.save",
}
__all__ = [
    "LayerPlan",
    "NumpruneError",
    "PruneConfig",
    "PruningPlan",
    "apply_plan_",
    "compensate",
    "export_gguf",
    "load_pruned",
    "numerical_score",
    "plan_pruning",
    "prune_",
    "save_pruned",
]

if TYPE_CHECKING:
    from numprune.compensate import compensate
    from numprune.config import PruneConfig
    from numprune.errors import NumpruneError
    from numprune.export.gguf import export_gguf
    from numprune.plan import LayerPlan, PruningPlan
    from numprune.prune import apply_plan_, plan_pruning, prune_
    from numprune.save import load_pruned, save_pruned
    from numprune.score import numerical_score


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'numprune' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
