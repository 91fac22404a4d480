"""The shapes of a LlamaGen GPT: ``GPTConfig`` (per-layer heads / MLP widths once pruned) and the official
model sizes (``GPT-B`` ... ``GPT-3B``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class GPTConfig:
    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    head_dim: int = 0  # 0: dim // n_head (3B: 100)
    ffn_dim: int = 0  # 0: find_multiple(int(2 * 4 * dim / 3), multiple_of)
    multiple_of: int = 256
    vocab_size: int = 16384
    num_classes: int = 1000
    cls_token_num: int = 1
    block_size: int = 576  # image tokens: a square grid (24 x 24 at 384 px with the x16 tokenizer)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    layer_n_heads: list[int] | None = None  # pruned: heads per layer (0 = attention block removed)
    layer_ffn_dims: list[int] | None = None  # pruned: MLP channels per layer (0 = MLP block removed)
    output_bias: bool = False  # pruned with a bias-adding method (FLAP): wo / w2 carry a bias
    _name_or_path: str = ""  # where the weights came from (a checkpoint path, "random:NAME"): plans and rows

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.dim // self.n_head
        if not self.ffn_dim:
            self.ffn_dim = find_multiple(int(2 * 4 * self.dim / 3), self.multiple_of)
        grid = math.isqrt(self.block_size)
        if grid * grid != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square grid")
        if self.head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {self.head_dim}")

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    def heads(self, i: int) -> int:
        return self.layer_n_heads[i] if self.layer_n_heads is not None else self.n_head

    def ffn(self, i: int) -> int:
        return self.layer_ffn_dims[i] if self.layer_ffn_dims is not None else self.ffn_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# name -> (n_layer, n_head, dim); head_dim = dim // n_head (GPT_models in the official gpt.py)
CONFIGS: dict[str, dict[str, int]] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),
}


def gpt_config(name: str, image_size: int = 384, downsample: int = 16, **overrides) -> GPTConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown LlamaGen model {name!r}; available: {', '.join(CONFIGS)}")
    grid = image_size // downsample
    return GPTConfig(**{**CONFIGS[name], "block_size": grid * grid, **overrides})
