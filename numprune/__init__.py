"""numprune: numerical pruning of autoregressive models (Shen, Song et al., AAAI 2025)."""

__version__ = "0.1.0"

from numprune.compensate import compensate
from numprune.errors import NumpruneError
from numprune.plan import LayerPlan, PruningPlan
from numprune.prune import PruneConfig, apply_plan_, plan_pruning, prune_
from numprune.pruned_model import load_pruned
from numprune.save import save_pruned
from numprune.score import numerical_score

__all__ = [
    "LayerPlan",
    "NumpruneError",
    "PruneConfig",
    "PruningPlan",
    "apply_plan_",
    "compensate",
    "load_pruned",
    "numerical_score",
    "plan_pruning",
    "prune_",
    "save_pruned",
]
