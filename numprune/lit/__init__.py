"""The Lightning layer: modules, the text datamodule, the scoring/compensation callbacks, the config CLI."""

from numprune.lit.callbacks import CompensationCallback, ScoringCallback, pruning_callbacks, summary_line
from numprune.lit.data import TextDataModule
from numprune.lit.llamagen import LlamaGenModule
from numprune.lit.module import CausalLMModule, PrunableModule

__all__ = [
    "CausalLMModule",
    "CompensationCallback",
    "LlamaGenModule",
    "PrunableModule",
    "ScoringCallback",
    "TextDataModule",
    "pruning_callbacks",
    "summary_line",
]
