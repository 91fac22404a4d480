"""Hugging Face classes for the decoder families numprune prunes, with per-layer head counts and MLP widths.

This file is self-contained (torch + transformers only) on purpose: ``save_pruned`` copies it verbatim into
every saved model folder as ``modeling_numprune.py``, so ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` builds exactly what ``numprune.load_pruned(dir)`` builds without remote code.

A pruned layer ``i`` has ``layer_num_heads[i]`` query heads, ``layer_num_kv_heads[i]`` KV heads and
``layer_intermediate_sizes[i]`` MLP channels (0 means the block is gone and adds only its output bias).
``output_bias`` gives ``o_proj`` and ``down_proj`` a bias (FLAP's compensation needs one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)


class _EmptyBlock(nn.Module):
    """A fully pruned attention or MLP block: outputs its bias (or zeros) at every position."""

    def __init__(self, hidden: int, bias: bool, returns_tuple: bool, like: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden, dtype=like.dtype, device=like.device)) if bias else None
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = torch.zeros_like(hidden_states)
        if self.bias is not None:
            out = out + self.bias
        return (out, None) if self.returns_tuple else out


def _linear(n_in: int, n_out: int, bias: bool, like: torch.Tensor) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=bias, device=like.device, dtype=like.dtype)


def _hidden_size(layer: Any) -> int:
    return layer.input_layernorm.weight.numel()


def resize_attention(layer: Any, heads: int, kv_heads: int, output_bias: bool) -> nn.Module:
    """Swap q/k/v/o of one LLaMA-style layer for new (uninitialised) ones with ``heads`` / ``kv_heads`` heads.
    Returns the module that now holds the block's output bias (``o_proj``, or the empty block)."""
    attn, hidden = layer.self_attn, _hidden_size(layer)
    like = next(attn.parameters(), None)
    if like is None:
        like = layer.input_layernorm.weight
    if heads == 0:
        layer.self_attn = _EmptyBlock(hidden, output_bias, returns_tuple=True, like=like)
        return layer.self_attn
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"{heads} query heads do not split into {kv_heads} KV heads")
    hd, qkv_bias = attn.head_dim, attn.q_proj.bias is not None
    attn.q_proj = _linear(hidden, heads * hd, qkv_bias, like)
    attn.k_proj = _linear(hidden, kv_heads * hd, qkv_bias, like)
    attn.v_proj = _linear(hidden, kv_heads * hd, qkv_bias, like)
    attn.o_proj = _linear(heads * hd, hidden, output_bias, like)
    attn.num_key_value_groups = heads // kv_heads
    return attn.o_proj


def resize_mlp(layer: Any, intermediate: int, output_bias: bool) -> nn.Module:
    """Swap gate/up/down of one LLaMA-style layer for new (uninitialised) ones with ``intermediate`` channels.
    Returns the module that now holds the block's output bias (``down_proj``, or the empty block)."""
    mlp, hidden = layer.mlp, _hidden_size(layer)
    like = next(mlp.parameters(), None)
    if like is None:
        like = layer.input_layernorm.weight
    if intermediate == 0:
        layer.mlp = _EmptyBlock(hidden, output_bias, returns_tuple=False, like=like)
        return layer.mlp
    in_bias = mlp.gate_proj.bias is not None
    mlp.gate_proj = _linear(hidden, intermediate, in_bias, like)
    mlp.up_proj = _linear(hidden, intermediate, in_bias, like)
    mlp.down_proj = _linear(intermediate, hidden, output_bias, like)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = intermediate
    return mlp.down_proj


class _PerLayerShapes:
    """Mixin: after the base model builds uniform layers, resize each one to the config's per-layer counts."""

    config: Any
    model: Any

    def _apply_layer_shapes(self) -> None:
        cfg = self.config
        for i, layer in enumerate(self.model.layers):
            resize_attention(layer, cfg.layer_num_heads[i], cfg.layer_num_kv_heads[i], cfg.output_bias)
            resize_mlp(layer, cfg.layer_intermediate_sizes[i], cfg.output_bias)


def pruned_classes(base_type: str, stock_config: Any, stock_model: Any) -> tuple[Any, Any]:
    """The per-layer config and model classes of one stock family: ``numpruned_<base_type>`` configs with
    ``layer_num_heads`` / ``layer_num_kv_heads`` / ``layer_intermediate_sizes`` / ``output_bias``, and a model
    that builds the stock layers, then resizes each to its counts."""

    @strict
    class Config(stock_config):
        model_type = f"numpruned_{base_type}"
        layer_num_heads: list[int] | None = None
        layer_num_kv_heads: list[int] | None = None
        layer_intermediate_sizes: list[int] | None = None
        output_bias: bool = False

    class Model(_PerLayerShapes, stock_model):
        config_class = Config

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self._apply_layer_shapes()

    # the names a saved config's auto_map and architectures refer to (modeling_numprune.<name>)
    for cls, stock in ((Config, stock_config), (Model, stock_model)):
        cls.__name__ = cls.__qualname__ = f"Numpruned{stock.__name__}"
        cls.__module__ = __name__
    return Config, Model


# One line per family: the stock config's model_type and its classes.
NumprunedLlamaConfig, NumprunedLlamaForCausalLM = pruned_classes("llama", LlamaConfig, LlamaForCausalLM)
NumprunedMistralConfig, NumprunedMistralForCausalLM = pruned_classes("mistral", MistralConfig, MistralForCausalLM)
NumprunedQwen2Config, NumprunedQwen2ForCausalLM = pruned_classes("qwen2", Qwen2Config, Qwen2ForCausalLM)
NumprunedQwen3Config, NumprunedQwen3ForCausalLM = pruned_classes("qwen3", Qwen3Config, Qwen3ForCausalLM)
NumprunedGemma3TextConfig, NumprunedGemma3ForCausalLM = pruned_classes(
    "gemma3_text", Gemma3TextConfig, Gemma3ForCausalLM
)

# base model_type -> (pruned config class, pruned model class)
PRUNED_CLASSES: dict[str, tuple[Any, Any]] = {
    "llama": (NumprunedLlamaConfig, NumprunedLlamaForCausalLM),
    "mistral": (NumprunedMistralConfig, NumprunedMistralForCausalLM),
    "qwen2": (NumprunedQwen2Config, NumprunedQwen2ForCausalLM),
    "qwen3": (NumprunedQwen3Config, NumprunedQwen3ForCausalLM),
    "gemma3_text": (NumprunedGemma3TextConfig, NumprunedGemma3ForCausalLM),
}
_BY_PRUNED_TYPE = {cfg.model_type: model for cfg, model in PRUNED_CLASSES.values()}


def load_pruned(path: str | Path, dtype: torch.dtype | None = None, **kwargs) -> nn.Module:
    """Load a model saved by numprune (or any dense model) without remote code; same logits as remote code."""
    cfg_file = Path(path) / "config.json"
    model_type = json.loads(cfg_file.read_text()).get("model_type") if cfg_file.exists() else None
    cls = _BY_PRUNED_TYPE.get(model_type, AutoModelForCausalLM)
    return cls.from_pretrained(path, dtype=dtype, **kwargs)


# Register the pruned types so that AutoConfig / AutoTokenizer / AutoModelForCausalLM resolve them in-process
# without remote code (the copied modeling file registers itself again; exist_ok makes that harmless).
for _cfg_cls, _model_cls in PRUNED_CLASSES.values():
    AutoConfig.register(_cfg_cls.model_type, _cfg_cls, exist_ok=True)
    AutoModelForCausalLM.register(_cfg_cls, _model_cls, exist_ok=True)
