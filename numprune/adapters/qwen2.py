"""Qwen2 / Qwen2.5: the LLaMA layout with biases on ``q_proj``, ``k_proj`` and ``v_proj``.

A head's rows of a projection take their bias entries with them: the surgery slices weight rows and bias
entries with the same indices (``rows_for_heads``), and ``LayerGeometry(qkv_bias=True)`` counts them in a
head's cost. Optional sliding-window layers (``use_sliding_window``, ``max_window_layers``) are the config's
``layer_types``, which depth pruning shortens with the layers it removes.
"""

from __future__ import annotations

from numprune.adapters.hf_decoder import HFDecoderAdapter


class Qwen2Adapter(HFDecoderAdapter):
    name = "qwen2"
    model_type = "qwen2"
