"""Qwen3 (dense): the LLaMA layout with ``q_norm`` / ``k_norm``, RMSNorms over each head's ``head_dim`` vector.

One norm weight of ``head_dim`` entries is shared by every head, so pruning heads leaves both norms unchanged.
The norms sit inside the attention, after ``q_proj`` / ``k_proj``: the residual stream still meets only the
pre-block RMSNorms, so SliceGPT's rotations apply as for LLaMA.
"""

from __future__ import annotations

from numprune.adapters.hf_decoder import HFDecoderAdapter


class Qwen3Adapter(HFDecoderAdapter):
    name = "qwen3"
    model_type = "qwen3"
