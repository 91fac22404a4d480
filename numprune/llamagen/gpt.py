"""The LlamaGen class-to-image GPT (Sun et al. 2024, arXiv 2406.06525), our own inference implementation.

State-dict keys follow the official ``autoregressive/models/gpt.py`` exactly (LLAMAGEN.md §1.3), so official
checkpoints load with a strict key check. Differences from the official module, on purpose:

- inference only: no dropout modules (all are identity in ``eval()``), no training label dropout;
- one ``forward(tokens, input_pos)``: a token row is ``[class_id, img_tok_0, img_tok_1, ...]``; positions
  ``< cls_token_num`` are looked up in the class table (index ``num_classes`` is the null class of CFG), the
  rest in the image-token table. Position ``p`` of the row has RoPE position ``p``;
- per-layer head counts and MLP widths (``layer_n_heads`` / ``layer_ffn_dims``) and an optional output bias,
  so a pruned model is a plain instance of the same class; the KV cache is sized per layer.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from numprune.adapters.llamagen import LlamaGenAdapter
from numprune.llamagen.config import GPTConfig, find_multiple
from numprune.llamagen.rope import apply_rope_2d, rope_2d_table


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # at least fp32, as the official code
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.to(x.dtype) * self.weight


class KVCache(nn.Module):
    """Keys and values of one layer for ``max_batch`` rows; buffers are not persistent (not in state_dict)."""

    k_cache: Tensor
    v_cache: Tensor

    def __init__(self, batch: int, heads: int, max_seq: int, head_dim: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        shape = (batch, heads, max_seq, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: [B, H, S, hd] written at positions input_pos [S]; returns the whole cache [B, H, max_seq, hd]
        b = k.shape[0]
        self.k_cache[:b, :, input_pos] = k.to(self.k_cache.dtype)
        self.v_cache[:b, :, input_pos] = v.to(self.v_cache.dtype)
        return self.k_cache[:b], self.v_cache[:b]


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, head_dim: int, output_bias: bool = False) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        inner = n_head * head_dim  # != dim once heads are pruned
        self.wqkv = nn.Linear(dim, 3 * inner, bias=False)  # rows [q | k | v], head-major inside each block
        self.wo = nn.Linear(inner, dim, bias=output_bias)
        self.kv_cache: KVCache | None = None

    def forward(
        self, x: Tensor, freqs_cis: Tensor, input_pos: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        b, s, _ = x.shape
        inner = self.n_head * self.head_dim
        q, k, v = self.wqkv(x).split([inner, inner, inner], dim=-1)
        q, k, v = (t.view(b, s, self.n_head, self.head_dim) for t in (q, k, v))  # [B, S, H, hd]
        q, k = apply_rope_2d(q, freqs_cis), apply_rope_2d(k, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, hd]
        if self.kv_cache is not None:
            if input_pos is None:
                raise ValueError("a KV cache needs input_pos")
            k, v = self.kv_cache.update(input_pos, k, v)  # [B, H, max_seq, hd]; mask hides unwritten slots
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.wo(y.transpose(1, 2).reshape(b, s, inner))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, output_bias: bool = False) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=output_bias)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class EmptyBlock(nn.Module):
    """A fully pruned attention or MLP block: adds only its bias (FLAP) or nothing."""

    def __init__(self, dim: int, bias: bool, like: Tensor) -> None:
        super().__init__()
        self.n_head = 0
        self.kv_cache = None
        self.bias = nn.Parameter(torch.zeros(dim, dtype=like.dtype, device=like.device)) if bias else None

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return torch.zeros_like(x) if self.bias is None else torch.zeros_like(x) + self.bias


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, n_head: int, ffn_dim: int) -> None:
        super().__init__()
        self.dim, self.head_dim = cfg.dim, cfg.head_dim
        self.attention: Attention | EmptyBlock = Attention(cfg.dim, n_head, cfg.head_dim, cfg.output_bias)
        self.feed_forward: FeedForward | EmptyBlock = FeedForward(cfg.dim, ffn_dim, cfg.output_bias)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if n_head == 0:
            self.resize_attention(0, cfg.output_bias)
        if ffn_dim == 0:
            self.resize_mlp(0, cfg.output_bias)

    def forward(
        self, x: Tensor, freqs_cis: Tensor, input_pos: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, input_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))

    def resize_attention(self, n_head: int, output_bias: bool) -> nn.Module:
        """New (uninitialised) ``wqkv``/``wo`` for ``n_head`` heads; returns the holder of the output bias."""
        like = self.attention_norm.weight
        if n_head == 0:
            self.attention = EmptyBlock(self.dim, output_bias, like)
            return self.attention
        attention = Attention(self.dim, n_head, self.head_dim, output_bias).to(like.device, like.dtype)
        self.attention = attention
        return attention.wo

    def resize_mlp(self, ffn_dim: int, output_bias: bool) -> nn.Module:
        like = self.ffn_norm.weight
        if ffn_dim == 0:
            self.feed_forward = EmptyBlock(self.dim, output_bias, like)
            return self.feed_forward
        feed_forward = FeedForward(self.dim, ffn_dim, output_bias).to(like.device, like.dtype)
        self.feed_forward = feed_forward
        return feed_forward.w2


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)  # row num_classes: the CFG null class

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


class LlamaGen(nn.Module):
    """Class-conditional LlamaGen GPT. ``forward(tokens [B, S], input_pos [S]) -> logits [B, S, vocab]`` (fp32)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg, cfg.heads(i), cfg.ffn(i)) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # A plain attribute (not a buffer): outside state_dict and never cast to bf16 by model.to(dtype).
        self.freqs_cis = rope_2d_table(cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num)
        self.max_seq = 0  # > 0 while KV caches are set up
        self.numprune_adapter = LlamaGenAdapter()

    @property
    def seq_len(self) -> int:
        """Positions of a full sequence: class token(s) + every image token (577 at 384 px)."""
        return self.config.cls_token_num + self.config.block_size

    def init_weights_(self, std: float = 0.02, seed: int | None = None) -> LlamaGen:
        """Random weights for tests and benchmarks (normal(0, std); norms 1; unlike the official init the
        output head is not zero, so that random models give non-trivial logits)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                p.data.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def setup_caches(self, max_batch: int, max_seq: int, dtype: torch.dtype | None = None) -> None:
        """Allocate per-layer KV caches (each layer's own head count), ``max_seq`` rounded up to 8."""
        like = self.output.weight
        max_seq = find_multiple(max_seq, 8)
        for layer in self.blocks():
            attn = layer.attention
            if isinstance(attn, Attention):
                attn.kv_cache = KVCache(
                    max_batch, attn.n_head, max_seq, layer.head_dim, dtype or like.dtype, like.device
                )
        self.max_seq = max_seq

    def clear_caches(self) -> None:
        for layer in self.blocks():
            if isinstance(layer.attention, Attention):
                layer.attention.kv_cache = None
        self.max_seq = 0

    def blocks(self) -> list[TransformerBlock]:
        """The decoder blocks, typed."""
        return cast(list[TransformerBlock], list(self.layers))

    def embed(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """``[B, S]`` ids at ascending positions ``input_pos`` -> ``[B, S, dim]``; class ids before image ids."""
        n_cls = int((input_pos < self.config.cls_token_num).sum())
        parts = []
        if n_cls:
            parts.append(self.cls_embedding(tokens[:, :n_cls]))
        if n_cls < tokens.shape[1]:
            parts.append(self.tok_embeddings(tokens[:, n_cls:]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, tokens: Tensor, input_pos: Tensor | None = None) -> Tensor:
        s = tokens.shape[1]
        if input_pos is None:
            input_pos = torch.arange(s, device=tokens.device)
        if self.freqs_cis.device != tokens.device:
            self.freqs_cis = self.freqs_cis.to(tokens.device)
        h = self.embed(tokens, input_pos)  # [B, S, dim]
        freqs = self.freqs_cis[input_pos]  # [S, hd/2, 2]
        mask = None  # no cache: causal attention over the S given positions
        if self.max_seq:
            # [1, 1, S, max_seq]: position p sees cached positions <= p
            mask = (torch.arange(self.max_seq, device=tokens.device)[None, :] <= input_pos[:, None])[None, None]
        for layer in self.layers:
            h = layer(h, freqs_cis=freqs, input_pos=input_pos if self.max_seq else None, mask=mask)
        return self.output(self.norm(h)).float()


def build_gpt(
    cfg: GPTConfig,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = 0,
) -> LlamaGen:
    """A randomly initialised model (``init_weights_``) on ``device`` in ``dtype``."""
    return LlamaGen(cfg).init_weights_(seed=seed).to(device=device, dtype=dtype)
