"""Adapter for numprune's own LlamaGen GPT (``numprune.llamagen.gpt``).

Heads are cut through the fused ``wqkv`` (part ``"qkv"``: the q, k and v row blocks of each kept head) and the
columns of ``wo``; MLP channels through the rows of ``w1``/``w3`` and the columns of ``w2``. Whole heads only:
RoPE pairs live inside a head (head_dim 64 for B..XXL, 100 for 3B).

Calibration batch layout (what ``run_model`` receives, ``[1, L]`` int64): ``[class_id, img_tok_0, ...,
img_tok_{L-2}]``, the class token first and the image tokens teacher-forced, as in training
(``numprune.llamagen.sampling.calibration_tokens`` builds such rows from the model's own samples).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from numprune.adapters.base import LayerGeometry


class LlamaGenAdapter:
    """Models and layers are ``numprune.llamagen.gpt.LlamaGen`` / ``TransformerBlock`` (typed ``Any``: the
    adapter is where a layout is read attribute by attribute)."""

    name = "llamagen"

    def layers(self, model: Any) -> nn.ModuleList:
        return model.layers

    def geometry(self, layer: Any) -> LayerGeometry:
        heads = layer.attention.n_head
        ffn = layer.feed_forward
        inter = ffn.w2.in_features if hasattr(ffn, "w2") else 0
        hd = layer.head_dim if heads else 0
        return LayerGeometry(hidden=layer.dim, num_heads=heads, num_kv_heads=heads, head_dim=hd, intermediate=inter)

    def out_projections(self, layer: Any) -> tuple[nn.Linear | None, nn.Linear | None]:
        return getattr(layer.attention, "wo", None), getattr(layer.feed_forward, "w2", None)

    def attn_in(self, layer: Any) -> list[tuple[nn.Linear, str]]:
        attn = layer.attention
        return [(attn.wqkv, "qkv")] if hasattr(attn, "wqkv") else []

    def mlp_in(self, layer: Any) -> list[nn.Linear]:
        ffn = layer.feed_forward
        return [ffn.w1, ffn.w3] if hasattr(ffn, "w1") else []

    def resize_attention(self, layer: Any, heads: int, kv_heads: int, output_bias: bool) -> nn.Module:
        if heads != kv_heads:
            raise ValueError(f"LlamaGen has no grouped-query attention: {heads} heads vs {kv_heads} KV heads")
        return layer.resize_attention(heads, output_bias)

    def resize_mlp(self, layer: Any, intermediate: int, output_bias: bool) -> nn.Module:
        return layer.resize_mlp(intermediate, output_bias)

    def run_model(self, model: Any, batch: Tensor) -> Any:
        if model.max_seq:
            raise ValueError("LlamaGen has KV caches set up; call clear_caches() before calibration")
        return model(batch)  # teacher-forced [class, tokens...]

    def layer_output(self, output: Any) -> Tensor:
        return output

    def finalize(self, model: Any, shapes: list[LayerGeometry], output_bias: bool) -> None:
        """Per-layer head counts and MLP widths into the model's config (saved by ``save_llamagen``)."""
        cfg = model.config
        cfg.layer_n_heads = [s.num_heads for s in shapes]
        cfg.layer_ffn_dims = [s.intermediate for s in shapes]
        cfg.output_bias = output_bias
