"""numprune: numerical pruning of autoregressive models (Shen, Song et al., AAAI 2025)."""

__version__ = "0.1.0"

from numprune.compensate import compensate
from numprune.errors import NumpruneError
from numprune.plan import LayerPlan, PruningPlan
from numprune.prune import PruneConfig, prune_
from numprune.pruned_model import load_pruned
from numprune.save import save_pruned
from numprune.score import numerical_score

__all__ = [
    "LayerPlan",
    "NumpruneError",
    "PruneConfig",
    "PruningPlan",
    "compensate",
    "load_pruned",
    "numerical_score",
    "prune_",
    "save_pruned",
]
