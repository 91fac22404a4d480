"""The LlamaGen VQ tokenizer (VQ-16: ``vq_ds16_c2i.pt``), our own implementation in the official key layout.

Encoder: conv_in, levels of ResnetBlocks (attention only at the last level), stride-2 downsampling after every
level but the last, mid (Res, Attn, Res), GroupNorm + swish + conv_out. Quantizer: 1x1 ``quant_conv`` to the
codebook dimension and a cosine nearest-neighbour lookup (both sides L2-normalised). Decoder mirrors it with
one more ResnetBlock per level and nearest x2 upsampling; its output is roughly in [-1, 1] (LLAMAGEN.md §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from numprune.llamagen.state_dict import load_checked_, read_state_dict


@dataclass
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    z_channels: int = 256
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    norm_groups: int = 32
    usage_buffer: int = 65536  # size of the official ``quantize.codebook_used`` buffer (0: none)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with 1x1 convolutions."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(c, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))  # [B,1,HW,C]
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(y.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as the official code


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(c_in: int, c_out: int, n_res: int, attn: bool, groups: int) -> nn.Module:
    level = nn.Module()
    level.res = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(n_res))
    level.attn = nn.ModuleList(AttnBlock(c_out, groups) for _ in range(n_res if attn else 0))
    return level


def _run_level(level: Any, h: Tensor) -> Tensor:  # a ``_level`` module (attributes set at build time)
    for i, res in enumerate(level.res):
        h = res(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _mid(c: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c, groups), AttnBlock(c, groups), ResnetBlock(c, c, groups)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g, mult, n = cfg.norm_groups, cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        chans = [cfg.ch * m for m in (1, *mult)]
        self.conv_blocks = nn.ModuleList()
        for i in range(n):
            level = _level(chans[i], chans[i + 1], cfg.num_res_blocks, attn=i == n - 1, groups=g)
            if i != n - 1:
                level.downsample = Downsample(chans[i + 1])
            self.conv_blocks.append(level)
        self.mid = _mid(chans[-1], g)
        self.norm_out = _norm(chans[-1], g)
        self.conv_out = nn.Conv2d(chans[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        level: Any
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g, mult, n = cfg.norm_groups, cfg.ch_mult, len(cfg.ch_mult)
        c = cfg.ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _mid(c, g)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(n)):  # lowest resolution first
            level = _level(c, cfg.ch * mult[i], cfg.num_res_blocks + 1, attn=i == n - 1, groups=g)
            c = cfg.ch * mult[i]
            if i != 0:
                level.upsample = Upsample(c)
            self.conv_blocks.append(level)
        self.norm_out = _norm(c, g)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        level: Any
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        if cfg.usage_buffer:
            self.register_buffer("codebook_used", torch.zeros(cfg.usage_buffer))  # training statistic only

    def codebook(self) -> Tensor:
        return F.normalize(self.embedding.weight, dim=-1)  # [K, e]

    def indices(self, z: Tensor) -> Tensor:
        """``z [B, e, H, W]`` -> nearest codes ``[B, H*W]`` (raster order) by cosine similarity."""
        zf = F.normalize(z.permute(0, 2, 3, 1).flatten(1, 2), dim=-1)  # [B, HW, e]
        return (zf @ self.codebook().T).argmax(-1)

    def lookup(self, codes: Tensor, grid: tuple[int, int]) -> Tensor:
        """``codes [B, H*W]`` -> ``[B, e, H, W]``."""
        b = codes.shape[0]
        return self.codebook()[codes].reshape(b, *grid, -1).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = cfg or VQConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def encode_to_codes(self, images: Tensor) -> Tensor:
        """``images [B, 3, H, W]`` in [-1, 1] -> codes ``[B, (H/16)*(W/16)]``."""
        return self.quantize.indices(self.quant_conv(self.encoder(images)))

    def decode_code(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Codes ``[B, H*W]`` (raster order; square grid if ``grid`` is None) -> images ``[B, 3, 16H, 16W]``."""
        if grid is None:
            side = math.isqrt(codes.shape[1])
            grid = (side, side)
        z = self.quantize.lookup(codes, grid).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(z))


def load_official_vq(source: str | Path, cfg: VQConfig | None = None, device: torch.device | str = "cpu") -> VQModel:
    """Load ``vq_ds16_c2i.pt`` (weights under ``"model"``) with a strict key check; the VQ stays in fp32."""
    with torch.device("meta"):
        model = VQModel(cfg)
    load_checked_(model, read_state_dict(source))
    return model.to(device).eval()
