"""Pure pieces of the GGUF layout: how a pruned layer is encoded for llama.cpp, RoPE row order, tensor types.

llama.cpp's ``llama`` graph builds every layer with layer 0's head count and FFN width; its ``deci``
architecture (Nemotron-NAS, ``src/models/deci.cpp``) reads ``head_count``, ``head_count_kv`` and
``feed_forward_length`` as per-layer arrays and builds each layer with its own shapes, which is what a numprune
model needs. ``deci``'s own encoding of missing blocks has two traps (read from ``deci.cpp`` and
``llama-model.cpp``, and measured, see /docs/gguf.md):

- ``n_head == 0`` is an attention-free layer (no ``attn_norm``/q/k/v/o tensors): exact, except in layer 0,
  whose head count sets the head size of every layer (``n_embd_head_k`` is read only when ``n_head(0) > 0``).
- ``n_ff == 0`` skips the whole rest of the layer, *including the residual update of the attention*: exact only
  when the layer has no attention either (then the layer is the identity).

Where ``deci`` cannot say "nothing" exactly, we write a one-unit block whose output projection is zero (plus
the block's output bias, if the model has one): the same function, a few parameters more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gguf
import torch
from torch import Tensor

from numprune.adapters.base import LayerGeometry

Part = Literal["full", "zero", "absent"]  # the real weights / one unit with a zero output / no tensors at all
DTYPES = ("f32", "f16", "bf16", "q8_0")
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_MATRIX_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}


@dataclass(frozen=True)
class BlockEncoding:
    """What one decoder layer looks like in the file: the per-layer counts and how each block is written."""

    n_head: int
    n_head_kv: int
    n_ff: int
    attention: Part
    mlp: Part


def encode_layer(geo: LayerGeometry, index: int, attn_bias: bool, mlp_bias: bool) -> BlockEncoding:
    """The ``deci`` encoding of a layer with ``geo``'s counts (see the module docstring for the two traps).

    ``attn_bias`` / ``mlp_bias``: the block has an output bias (FLAP compensation), which an absent block
    would drop, so a pruned-away block with a bias is written as one zero unit carrying the bias."""
    if geo.num_heads > 0:
        attention: Part = "full"
        heads, kv = geo.num_heads, geo.num_kv_heads
    elif index == 0 or attn_bias:
        attention, heads, kv = "zero", 1, 1
    else:
        attention, heads, kv = "absent", 0, 0
    if geo.intermediate > 0:
        mlp: Part = "full"
        ff = geo.intermediate
    elif attention != "absent" or mlp_bias:
        mlp, ff = "zero", 1
    else:
        mlp, ff = "absent", 0  # n_ff == 0 with no attention: llama.cpp skips the layer, the identity
    return BlockEncoding(heads, kv, ff, attention, mlp)


def is_uniform(encodings: list[BlockEncoding], geos: list[LayerGeometry], output_bias: bool) -> bool:
    """Every layer has the same nonzero counts and no output biases: the ``llama`` architecture carries it."""
    shapes = {(g.num_heads, g.num_kv_heads, g.intermediate) for g in geos}
    return len(shapes) == 1 and all(e.attention == e.mlp == "full" for e in encodings) and not output_bias


def rope_permute(weight: Tensor, n_heads: int) -> Tensor:
    """Reorder q or k rows (``[n_heads * head_dim, ...]``) from Hugging Face's rotate-half RoPE layout (pairs
    ``(j, j + head_dim/2)``) to llama.cpp's interleaved one (pairs ``(2j, 2j + 1)``), head by head: the stock
    converter's ``LlamaModel.permute``, applied with each layer's own head count."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    # [n_heads, 2 (first/second half), head_dim/2, ...] -> [n_heads, head_dim/2, 2, ...]
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def tensor_type(shape: tuple[int, ...], dtype: str) -> gguf.GGMLQuantizationType:
    """The stored type of a tensor: vectors stay F32 (norms, biases, rope factors); matrices take ``dtype``,
    except that Q8_0 needs rows (the last dimension) in whole 32-element blocks and falls back to F16 otherwise,
    as llama.cpp's converter does."""
    if len(shape) < 2 or dtype == "f32":
        return gguf.GGMLQuantizationType.F32
    qtype = _MATRIX_TYPES[dtype]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return gguf.GGMLQuantizationType.F16
    return qtype


def llama3_rope_factors(rope: dict, head_dim: int) -> Tensor:
    """Per-frequency divisors of LLaMA-3.1's RoPE scaling (``rope_type: llama3``), the ``rope_freqs`` tensor."""
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * torch.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    out = torch.where(wavelen < old_ctx / high, torch.ones_like(freqs), mid)
    return torch.where(wavelen > old_ctx / low, torch.full_like(freqs, factor), out).float()
