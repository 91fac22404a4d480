"""Gemma 3, text-only (``Gemma3ForCausalLM``, config ``gemma3_text``).

What differs from the LLaMA layout, and why pruning is still the shared code:

- ``q_norm`` / ``k_norm`` over ``head_dim``, shared by all heads: unchanged by head pruning (as Qwen3).
- Four norms per layer: ``input_layernorm`` before the attention, ``post_attention_layernorm`` on its output,
  ``pre_feedforward_layernorm`` before the MLP, ``post_feedforward_layernorm`` on its output. Scores and the
  compensation target are still the raw ``o_proj`` / ``down_proj`` inputs and outputs: the least-squares refit
  reproduces what the dense projection wrote, and the post-norm then sees the same vector. An empty block
  writes zeros (or its bias), which the post-norm maps to zeros (or the norm of the bias) in both the masked
  and the physically pruned model.
- Sliding-window and global layers (``layer_types``), ``query_pre_attn_scalar`` (the attention scale is
  ``query_pre_attn_scalar ** -0.5``, not ``head_dim ** -0.5``), the embedding scaled by ``sqrt(hidden)`` and tied
  to ``lm_head``: config fields and buffers that head and channel pruning never touch; depth pruning shortens
  ``layer_types`` with the layers it removes.
- Not for SliceGPT: the post-norms normalise the blocks' outputs before they reach the residual stream, and
  the norms scale by ``1 + weight``; the residual stream is not rotation invariant.
- One KV head (Gemma 3 270M): ``gqa="groups"`` would have a single unit per layer, so the selection prunes
  query heads within the group instead (``numprune.select.gqa_mode``; the plan records ``gqa_effective``).
"""

from __future__ import annotations

from numprune.adapters.hf_decoder import HFDecoderAdapter


class Gemma3Adapter(HFDecoderAdapter):
    name = "gemma3"
    model_type = "gemma3_text"
    mlp_norm = "pre_feedforward_layernorm"
    rotation_invariant = False
