"""The Lightning layer: modules, datamodules, the scoring/compensation callbacks, the ``numprune run`` CLI."""

from numprune.lit.callbacks import CompensationCallback, ScoringCallback, pruning_callbacks, summary_line
from numprune.lit.data import TextDataModule
from numprune.lit.llamagen_module import LlamaGenModule
from numprune.lit.module import CausalLMModule

__all__ = [
    "CausalLMModule",
    "CompensationCallback",
    "LlamaGenModule",
    "ScoringCallback",
    "TextDataModule",
    "pruning_callbacks",
    "summary_line",
]
