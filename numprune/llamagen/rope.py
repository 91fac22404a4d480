"""2D rotary position embedding of LlamaGen (LLAMAGEN.md §1.4).

Each head of size ``hd`` rotates ``hd/2`` interleaved pairs ``(x[2p], x[2p+1])``: the first ``hd/4`` pairs by
the row of the token on the grid, the last ``hd/4`` by its column. Frequencies ``base^(-2j/(hd/2))`` for
``j < hd/4``. The class-token position(s) get cos = sin = 0, which zeroes their q and k (the official quirk).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_2d_table(grid: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 1) -> Tensor:
    """``[cls_token_num + grid*grid, head_dim/2, 2]`` (cos, sin) in float32, raster order."""
    half = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, half, 2)[: half // 2].float() / half)  # [hd/4]
    t = torch.arange(grid, dtype=torch.float32)
    ang = torch.outer(t, freqs)  # [grid, hd/4]
    rows = ang[:, None, :].expand(grid, grid, -1)  # angle of the row index
    cols = ang[None, :, :].expand(grid, grid, -1)  # angle of the column index
    grid_ang = torch.cat([rows, cols], dim=-1).reshape(grid * grid, half)  # [grid^2, hd/2]
    table = torch.stack([grid_ang.cos(), grid_ang.sin()], dim=-1)  # [grid^2, hd/2, 2]
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def apply_rope_2d(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Rotate ``x [B, S, H, hd]`` by ``freqs_cis [S, hd/2, 2]``; computed in (at least) fp32, cast back."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(*x.shape[:-1], -1, 2)  # [B, S, H, hd/2, 2]
    f = freqs_cis.to(xf.dtype)[None, :, None]  # [1, S, 1, hd/2, 2]
    cos, sin = f[..., 0], f[..., 1]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(3).to(x.dtype)
