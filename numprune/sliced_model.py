"""Hugging Face classes for LLaMA, Mistral, Qwen2 and Qwen3 models sliced by SliceGPT (Ashkboos et al., ICLR 2024).

This file is self-contained (torch + transformers only) on purpose: ``save_pruned`` copies it verbatim into a
sliced model's folder as ``modeling_numprune_sliced.py``, so ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` builds exactly what ``numprune.load_pruned(dir)`` builds without remote code.

A sliced model keeps every head and MLP channel; what shrinks is the residual stream. ``residual_dims`` lists
its width at the ``2L + 1`` points where it is read: ``[embedding, mid_0, out_0, mid_1, out_1, ...]`` (``mid_i``
between the attention and the MLP of layer ``i``, ``out_i`` after layer ``i``; the last one feeds ``lm_head``).
Each layer carries two shortcut matrices (``attn_shortcut``: ``in -> mid``, ``mlp_shortcut``: ``mid -> out``)
that carry the residual from one rotated basis into the next (the paper's ``Q_l^T Q_{l+1}``). The norms have
no weight (it is folded into the linear layers that read them) and divide by the *dense* width, as SliceGPT's
``RMSN`` does: a sliced vector whose discarded principal components are small keeps the dense norm.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_layers import GradientCheckpointingLayer


class ResidualRMSNorm(nn.Module):
    """Weightless RMSNorm of a (sliced) residual stream: ``x / sqrt(sum(x^2) / dense_size + eps)``."""

    def __init__(self, dense_size: int, eps: float) -> None:
        super().__init__()
        self.dense_size = dense_size
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.dense_size + self.eps)
        return x.to(dtype)

    def extra_repr(self) -> str:
        return f"dense_size={self.dense_size}, eps={self.eps}"


class SlicedDecoderLayer(GradientCheckpointingLayer):
    """A pre-norm decoder layer whose residual path goes through the shortcut matrices:
    ``h = S_a x + attn(norm(x))``, ``y = S_m h + mlp(norm(h))`` (widths ``in -> mid -> out``)."""

    def __init__(self, self_attn: nn.Module, mlp: nn.Module, dims: tuple[int, int, int], dense_size: int, eps: float):
        super().__init__()
        d_in, d_mid, d_out = dims
        like = next(self_attn.parameters())
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = ResidualRMSNorm(dense_size, eps)
        self.post_attention_layernorm = ResidualRMSNorm(dense_size, eps)
        self.attn_shortcut = nn.Linear(d_in, d_mid, bias=False, device=like.device, dtype=like.dtype)
        self.mlp_shortcut = nn.Linear(d_mid, d_out, bias=False, device=like.device, dtype=like.dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = self.attn_shortcut(hidden_states) + attn
        return self.mlp_shortcut(hidden_states) + self.mlp(self.post_attention_layernorm(hidden_states))


def identity_shortcuts_(layer: SlicedDecoderLayer) -> SlicedDecoderLayer:
    """Set both shortcut matrices to the identity (an unrotated, unsliced layer)."""
    for lin in (layer.attn_shortcut, layer.mlp_shortcut):
        lin.weight.data.copy_(torch.eye(lin.out_features, lin.in_features))
    return layer


def sliced_layer(layer: Any, dense_size: int, eps: float) -> SlicedDecoderLayer:
    """A ``SlicedDecoderLayer`` holding the attention and MLP modules of a dense LLaMA-style ``layer``, with
    identity shortcuts: the same function as ``layer`` once its norm weights are folded into q/k/v and gate/up."""
    attn, mlp = layer.self_attn, layer.mlp
    dims = (attn.q_proj.in_features, attn.o_proj.out_features, mlp.down_proj.out_features)
    if dims != (dense_size,) * 3:
        raise ValueError(f"sliced_layer converts a dense layer (width {dense_size}), got widths {dims}")
    return identity_shortcuts_(SlicedDecoderLayer(attn, mlp, dims, dense_size, eps))


def _resized(lin: nn.Linear, n_in: int, n_out: int) -> nn.Linear:
    w = lin.weight
    return nn.Linear(n_in, n_out, bias=lin.bias is not None, device=w.device, dtype=w.dtype)


class _Sliced:
    """Mixin: after the base model builds dense layers, give them the config's residual widths."""

    config: Any
    model: Any
    lm_head: nn.Linear

    def _apply_slicing(self) -> None:
        cfg = self.config
        dense, n = cfg.hidden_size, cfg.num_hidden_layers
        dims = cfg.residual_dims or [dense] * (2 * n + 1)
        if len(dims) != 2 * n + 1:
            raise ValueError(f"residual_dims needs {2 * n + 1} entries for {n} layers, got {len(dims)}")
        emb = self.model.embed_tokens
        w = emb.weight
        self.model.embed_tokens = nn.Embedding(
            emb.num_embeddings, dims[0], padding_idx=emb.padding_idx, device=w.device, dtype=w.dtype
        )
        for i, layer in enumerate(self.model.layers):
            d_in, d_mid, d_out = dims[2 * i : 2 * i + 3]
            attn, mlp = layer.self_attn, layer.mlp
            attn.q_proj = _resized(attn.q_proj, d_in, attn.q_proj.out_features)
            attn.k_proj = _resized(attn.k_proj, d_in, attn.k_proj.out_features)
            attn.v_proj = _resized(attn.v_proj, d_in, attn.v_proj.out_features)
            attn.o_proj = _resized(attn.o_proj, attn.o_proj.in_features, d_mid)
            mlp.gate_proj = _resized(mlp.gate_proj, d_mid, mlp.gate_proj.out_features)
            mlp.up_proj = _resized(mlp.up_proj, d_mid, mlp.up_proj.out_features)
            mlp.down_proj = _resized(mlp.down_proj, mlp.down_proj.in_features, d_out)
            self.model.layers[i] = SlicedDecoderLayer(attn, mlp, (d_in, d_mid, d_out), dense, cfg.rms_norm_eps)
        self.model.norm = ResidualRMSNorm(dense, cfg.rms_norm_eps)
        self.lm_head = _resized(self.lm_head, dims[-1], self.lm_head.out_features)


@strict
class NumprunedSlicedLlamaConfig(LlamaConfig):
    model_type = "numpruned_sliced_llama"
    residual_dims: list[int] | None = None


@strict
class NumprunedSlicedMistralConfig(MistralConfig):
    model_type = "numpruned_sliced_mistral"
    residual_dims: list[int] | None = None


@strict
class NumprunedSlicedQwen2Config(Qwen2Config):
    model_type = "numpruned_sliced_qwen2"
    residual_dims: list[int] | None = None


class NumprunedSlicedLlamaForCausalLM(_Sliced, LlamaForCausalLM):
    config_class = NumprunedSlicedLlamaConfig

    def __init__(self, config: NumprunedSlicedLlamaConfig) -> None:
        super().__init__(config)
        self._apply_slicing()


class NumprunedSlicedMistralForCausalLM(_Sliced, MistralForCausalLM):
    config_class = NumprunedSlicedMistralConfig

    def __init__(self, config: NumprunedSlicedMistralConfig) -> None:
        super().__init__(config)
        self._apply_slicing()


class NumprunedSlicedQwen2ForCausalLM(_Sliced, Qwen2ForCausalLM):
    config_class = NumprunedSlicedQwen2Config

    def __init__(self, config: NumprunedSlicedQwen2Config) -> None:
        super().__init__(config)
        self._apply_slicing()


@strict
class NumprunedSlicedQwen3Config(Qwen3Config):
    model_type = "numpruned_sliced_qwen3"
    residual_dims: list[int] | None = None


class NumprunedSlicedQwen3ForCausalLM(_Sliced, Qwen3ForCausalLM):
    config_class = NumprunedSlicedQwen3Config

    def __init__(self, config: NumprunedSlicedQwen3Config) -> None:
        super().__init__(config)
        self._apply_slicing()


# base model_type -> (sliced config class, sliced model class); Gemma 3 is not rotation invariant

SLICED_CLASSES: dict[str, tuple[Any, Any]] = {
    "llama": (NumprunedSlicedLlamaConfig, NumprunedSlicedLlamaForCausalLM),
    "mistral": (NumprunedSlicedMistralConfig, NumprunedSlicedMistralForCausalLM),
    "qwen2": (NumprunedSlicedQwen2Config, NumprunedSlicedQwen2ForCausalLM),
    "qwen3": (NumprunedSlicedQwen3Config, NumprunedSlicedQwen3ForCausalLM),
}

# Register the sliced types so that AutoConfig / AutoModelForCausalLM resolve them in-process without remote code
# (the copied modeling file registers itself again; exist_ok makes that harmless).
for _cfg_cls, _model_cls in SLICED_CLASSES.values():
    AutoConfig.register(_cfg_cls.model_type, _cfg_cls, exist_ok=True)
    AutoModelForCausalLM.register(_cfg_cls, _model_cls, exist_ok=True)
