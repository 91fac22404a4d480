"""Apply a layer's kept heads / channels: compute the new tensors first, then swap or mask the modules.

``mask_only`` zeroes the removed rows and columns in place instead of slicing: the equivalence tests compare
it with the physically pruned model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from numprune.adapters import Adapter
from numprune.adapters.base import LayerGeometry, head_columns, rows_for_heads


def _set_bias(linear: nn.Linear, bias: Tensor | None) -> None:
    if bias is None:
        if linear.bias is not None:
            linear.bias.data.zero_()
        return
    bias = bias.to(device=linear.weight.device, dtype=linear.weight.dtype)
    if linear.bias is None:
        linear.bias = nn.Parameter(bias.clone())
    else:
        linear.bias.data.copy_(bias)


def _mask_rows_(linear: nn.Linear, keep_rows: Tensor) -> None:
    mask = torch.zeros(linear.out_features, dtype=torch.bool, device=linear.weight.device)
    mask[keep_rows.to(mask.device)] = True
    linear.weight.data[~mask] = 0
    if linear.bias is not None:
        linear.bias.data[~mask] = 0


def _write_columns_(linear: nn.Linear, keep_cols: Tensor, new_weight: Tensor) -> None:
    full = torch.zeros_like(linear.weight)
    full[:, keep_cols.to(full.device)] = new_weight.to(full)
    linear.weight.data.copy_(full)


@torch.no_grad()
def prune_attention_(
    adapter: Adapter,
    layer: nn.Module,
    geo: LayerGeometry,
    heads: Tensor,
    kv_heads: Tensor,
    o_weight: Tensor | None = None,
    o_bias: Tensor | None = None,
    output_bias: bool = False,
    mask_only: bool = False,
) -> None:
    """Keep query ``heads`` and ``kv_heads`` of one layer. ``o_weight`` (``[hidden, len(heads)*D_h]``) replaces the
    kept ``o_proj`` columns (compensation); ``o_bias`` becomes its bias (FLAP)."""
    cols = head_columns(geo, heads)
    o_proj = adapter.out_projections(layer)[0]
    assert o_proj is not None, "the attention of this layer was already cut"
    if o_weight is None:
        o_weight = o_proj.weight[:, cols.to(o_proj.weight.device)]
    ins = [(lin, rows_for_heads(part, geo, heads, kv_heads)) for lin, part in adapter.attn_in(layer)]
    if mask_only:
        for lin, rows in ins:
            _mask_rows_(lin, rows)
        _write_columns_(o_proj, cols, o_weight)
        if o_bias is not None or output_bias:
            _set_bias(o_proj, o_bias)
        return
    new_in: list[tuple[Tensor, Tensor | None]] = [
        (lin.weight[rows], None if lin.bias is None else lin.bias[rows]) for lin, rows in ins
    ]
    bias = o_bias if o_bias is not None else o_proj.bias
    holder: Any = adapter.resize_attention(layer, len(heads), len(kv_heads), output_bias)
    _copy_into(adapter.attn_in(layer), new_in)
    if len(heads):
        holder.weight.data.copy_(o_weight)
    if holder.bias is not None:  # every head pruned: the block only adds this bias
        holder.bias.data.copy_(bias if bias is not None else torch.zeros_like(holder.bias))


@torch.no_grad()
def prune_mlp_(
    adapter: Adapter,
    layer: nn.Module,
    channels: Tensor,
    down_weight: Tensor | None = None,
    down_bias: Tensor | None = None,
    output_bias: bool = False,
    mask_only: bool = False,
) -> None:
    """Keep MLP ``channels`` of one layer; ``down_weight`` (``[hidden, len(channels)]``) replaces the kept
    ``down_proj`` columns, ``down_bias`` becomes its bias."""
    down = adapter.out_projections(layer)[1]
    assert down is not None, "the MLP of this layer was already cut"
    if down_weight is None:
        down_weight = down.weight[:, channels.to(down.weight.device)]
    ins = adapter.mlp_in(layer)
    if mask_only:
        for lin in ins:
            _mask_rows_(lin, channels)
        _write_columns_(down, channels, down_weight)
        if down_bias is not None or output_bias:
            _set_bias(down, down_bias)
        return
    idx = channels.to(down.weight.device)
    new_in: list[tuple[Tensor, Tensor | None]] = [
        (lin.weight[idx], None if lin.bias is None else lin.bias[idx]) for lin in ins
    ]
    bias = down_bias if down_bias is not None else down.bias
    holder: Any = adapter.resize_mlp(layer, len(channels), output_bias)
    _copy_into(adapter.mlp_in(layer), new_in)
    if len(channels):
        holder.weight.data.copy_(down_weight)
    if holder.bias is not None:
        holder.bias.data.copy_(bias if bias is not None else torch.zeros_like(holder.bias))


def _copy_into(modules: list, tensors: list[tuple[Tensor, Tensor | None]]) -> None:
    for lin, (w, b) in zip(modules, tensors):
        lin = lin[0] if isinstance(lin, tuple) else lin
        lin.weight.data.copy_(w)
        if b is not None:
            lin.bias.data.copy_(b)
