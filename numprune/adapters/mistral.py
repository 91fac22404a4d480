"""Mistral: the LLaMA layout with sliding-window attention (``sliding_window`` in the config).

The window is a property of the attention mask, not of any weight: pruned and reloaded models keep it from the
config, every layer alike.
"""

from __future__ import annotations

from numprune.adapters.hf_decoder import HFDecoderAdapter


class MistralAdapter(HFDecoderAdapter):
    name = "mistral"
    model_type = "mistral"
    gguf_architecture = "llama"  # sliding window not written (llama.cpp reads it as LLaMA)
