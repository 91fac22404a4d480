"""LLaMA-1/2/3.x (and SmolLM2): the reference layout of ``HFDecoderAdapter``.

Llama-3.x scales RoPE by frequency band (``rope_parameters`` with ``rope_type: "llama3"``, given as
``rope_scaling`` in older configs). Pruning heads never touches RoPE: the rebuilt config carries the RoPE
parameters over unchanged, so the reloaded model rotates its kept heads exactly as the dense one did.
"""

from __future__ import annotations

from numprune.adapters.hf_decoder import HFDecoderAdapter


class LlamaAdapter(HFDecoderAdapter):
    name = "llama"
    model_type = "llama"
    gguf_architecture = "llama"
