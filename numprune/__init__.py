"""numprune: numerical pruning of autoregressive models (Shen, Song et al., AAAI 2025)."""

__version__ = "0.1.0"

from numprune.compensate import compensate  # noqa: E402
from numprune.errors import NumpruneError  # noqa: E402
from numprune.plan import LayerPlan, PruningPlan  # noqa: E402
from numprune.prune import PruneConfig, prune_  # noqa: E402
from numprune.pruned_model import load_pruned  # noqa: E402
from numprune.save import save_pruned  # noqa: E402
from numprune.score import numerical_score  # noqa: E402

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
