"""The small interface through which the pipeline sees an architecture.

Everything the pipeline knows about module names, fused projections and per-layer attributes lives behind
this Protocol, so one pipeline prunes Hugging Face LLaMA-family models and LlamaGen alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from numprune.plan import LayerPlan

SHAPE_FIELDS = ("hidden", "num_heads", "num_kv_heads", "head_dim", "intermediate")


@dataclass(frozen=True)
class LayerGeometry:
    """Shapes of one decoder layer as it is now, and what its parts cost: the one place where parameter,
    KV-cache and attention-FLOP counts are derived (the adapter fills in the layout facts)."""

    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    qkv_bias: bool = False  # q/k/v projections carry biases (Qwen2): a head's rows take their bias entries
    mlp_matrices: int = 3  # gated MLP: gate, up, down (one row/column of each per channel)

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads if self.num_kv_heads else 0

    @property
    def shape(self) -> dict[str, int]:
        """The shape fields only (what a plan records and checks)."""
        return {k: getattr(self, k) for k in SHAPE_FIELDS}

    @property
    def query_head_params(self) -> int:
        """Parameters of one query head: its ``q_proj`` rows (and bias) and its ``o_proj`` columns."""
        return 2 * self.head_dim * self.hidden + (self.head_dim if self.qkv_bias else 0)

    @property
    def kv_head_params(self) -> int:
        """Parameters of one KV head: its ``k_proj`` and ``v_proj`` rows (and biases)."""
        return 2 * self.head_dim * self.hidden + (2 * self.head_dim if self.qkv_bias else 0)

    @property
    def channel_params(self) -> int:
        """Parameters of one MLP channel: one row of gate/up, one column of down."""
        return self.mlp_matrices * self.hidden

    @property
    def attention_params(self) -> int:
        return self.num_heads * self.query_head_params + self.num_kv_heads * self.kv_head_params

    @property
    def mlp_params(self) -> int:
        return self.intermediate * self.channel_params

    @property
    def params(self) -> int:
        """Attention + MLP parameters of the layer (what every ratio counts)."""
        return self.attention_params + self.mlp_params

    def residual_params(self, d_in: int, d_mid: int, d_out: int) -> int:
        """Attention + MLP parameters when the residual stream is ``d_in`` wide where q/k/v read it, ``d_mid``
        where o_proj writes and the MLP reads it, ``d_out`` where the MLP writes it (SliceGPT; the shortcut
        matrices are not included). ``residual_params(h, h, h) == params`` for ``h = hidden``."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = q * (d_in + d_mid) + 2 * kv * d_in + ((q + 2 * kv) if self.qkv_bias else 0)
        return attn + self.intermediate * ((self.mlp_matrices - 1) * d_mid + d_out)

    @property
    def kv_cache_per_token(self) -> int:
        """Elements of K and V cached per token (times the dtype's bytes: KV-cache bytes per token)."""
        return 2 * self.num_kv_heads * self.head_dim

    def attention_flops_per_token(self, context: int) -> int:
        """Multiply-adds x 2 of one decode step's attention at ``context`` cached tokens: projections plus
        ``q k^T`` and ``p v`` over the context."""
        proj = 2 * (self.num_heads * self.query_head_params + self.num_kv_heads * self.kv_head_params)
        return proj + 2 * 2 * self.num_heads * self.head_dim * context

    def kept(self, heads: int, kv_heads: int, channels: int) -> LayerGeometry:
        """This layer with ``heads`` query heads, ``kv_heads`` KV heads and ``channels`` MLP channels left."""
        return replace(self, num_heads=heads, num_kv_heads=kv_heads, intermediate=channels)

    @property
    def gram_elements(self) -> int:
        """Elements of the two Gram matrices of the layer's output projections (o_proj, down_proj inputs)."""
        return (self.num_heads * self.head_dim) ** 2 + self.intermediate**2


FLOPS_CONTEXT = 2048  # cached tokens at which results report attention FLOPs per token (the paper's length)


def per_token_costs(geos: list[LayerGeometry], element_size: int, context: int = FLOPS_CONTEXT) -> dict[str, int]:
    """What the attention of a model with these layers costs per generated token: KV-cache bytes
    (``element_size`` bytes per cached element) and attention FLOPs at ``context`` cached tokens."""
    return {
        "kv_bytes_per_token": element_size * sum(g.kv_cache_per_token for g in geos),
        "attn_flops_per_token": sum(g.attention_flops_per_token(context) for g in geos),
    }


def per_token_record(dense: list[LayerGeometry], plans: Sequence[LayerPlan], element_size: int) -> dict[str, int]:
    """``per_token_costs`` of a pruned model (the dense layers with the heads and channels ``plans`` keep) and of
    its dense original (``*_dense``): what a plan's ``achieved`` records next to the parameter ratio."""
    kept = [g.kept(len(p.heads), len(p.kv_heads), len(p.channels)) for g, p in zip(dense, plans)]
    record = per_token_costs(kept, element_size)
    record |= {f"{k}_dense": v for k, v in per_token_costs(dense, element_size).items()}
    return record | {"attn_flops_context": FLOPS_CONTEXT}


class Adapter(Protocol):
    """Architecture knowledge needed by calibration, scoring, compensation and surgery."""

    name: str

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers, in order."""

    def geometry(self, layer: nn.Module) -> LayerGeometry:
        """Current head counts and widths of one layer."""

    def out_projections(self, layer: nn.Module) -> tuple[nn.Linear | None, nn.Linear | None]:
        """``(o_proj, down_proj)``: the projections whose inputs are scored and whose columns are refit."""

    def attn_in(self, layer: nn.Module) -> list[tuple[nn.Linear, str]]:
        """Input-side attention projections with the part of the head layout their rows follow
        (``"q"``, ``"k"``, ``"v"``, or ``"qkv"`` for a fused projection with rows ``[q | k | v]``)."""

    def mlp_in(self, layer: nn.Module) -> list[nn.Linear]:
        """Input-side MLP projections whose output rows are the channels (gate/up, w1/w3)."""

    def resize_attention(self, layer: nn.Module, heads: int, kv_heads: int, output_bias: bool) -> nn.Module:
        """Swap the attention projections for new (uninitialised) ones; fix per-layer attributes. Returns the
        module that holds the block's output bias (the output projection, or an empty block's ``.bias``)."""

    def resize_mlp(self, layer: nn.Module, intermediate: int, output_bias: bool) -> nn.Module:
        """Swap the MLP projections for new (uninitialised) ones of ``intermediate`` channels (returns as above)."""

    def run_model(self, model: nn.Module, batch: Tensor) -> Any:
        """Forward the whole model on one calibration batch of token ids (used to capture layer-0 inputs)."""

    def layer_output(self, output: Any) -> Tensor:
        """The hidden states out of a decoder layer's forward return value."""

    def finalize(self, model: nn.Module, shapes: list[LayerGeometry], output_bias: bool) -> None:
        """Record the pruned per-layer shapes in the model's config so that it saves and reloads."""


class ResidualAdapter(Adapter, Protocol):
    """What the methods that rewrite the residual stream need besides ``Adapter`` (``scoring="transform"``:
    SliceGPT's rotations, depth pruning). Pre-norm layout assumed: an RMSNorm (no mean subtraction, so it is
    invariant under rotations of the residual stream) before the attention, before the MLP and before the head."""

    rotation_invariant: bool  # that layout holds (SliceGPT may rotate the residual stream); depth needs no more

    def embedding(self, model: nn.Module) -> nn.Embedding:
        """The token embedding (writes the residual stream)."""

    def lm_head(self, model: nn.Module) -> nn.Linear:
        """The output projection (reads the residual stream); may share its weight with the embedding."""

    def norm_weights(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        """The weights of the norms before the attention and before the MLP of a dense layer."""

    def final_norm_weight(self, model: nn.Module) -> Tensor:
        """The weight of the norm before ``lm_head``."""

    def to_sliced_(self, model: nn.Module) -> None:
        """Swap every decoder layer for a ``numprune.sliced_model.SlicedDecoderLayer`` (weightless norms,
        identity shortcut matrices) holding the same attention and MLP modules, the final norm for a weightless
        one, and the config for the matching sliced config (``residual_dims``, untied embeddings). The caller has
        folded the norm weights into the linear layers that read them and untied ``lm_head``."""

    def remove_layers_(self, model: nn.Module, indices: list[int]) -> None:
        """Delete the decoder layers at ``indices``; renumber the remaining ones (KV-cache slots) and shorten the
        per-layer config lists (layer types, per-layer shapes) so that the model saves and reloads."""


def part_rows(part: str, geo: LayerGeometry) -> dict[str, slice]:
    """Where the q / k / v rows lie in an attention input projection: the one statement of the fused-qkv row
    layout ``[q | k | v]`` (``part`` "q", "k", "v" or "qkv", as ``Adapter.attn_in`` names it)."""
    q, kv = geo.num_heads * geo.head_dim, geo.num_kv_heads * geo.head_dim
    if part == "q":
        return {"q": slice(0, q)}
    if part in ("k", "v"):
        return {part: slice(0, kv)}
    if part == "qkv":
        return {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}
    raise ValueError(f"unknown attention part {part!r}")


def rows_for_heads(part: str, geo: LayerGeometry, heads: Tensor, kv_heads: Tensor) -> Tensor:
    """Row indices of a q/k/v (or fused qkv) projection that belong to the kept heads."""
    rows = []
    for kind, where in part_rows(part, geo).items():
        idx = heads if kind == "q" else kv_heads
        assert where.start is not None
        rows.append((idx[:, None] * geo.head_dim + torch.arange(geo.head_dim) + where.start).reshape(-1))
    return torch.cat(rows)


def per_query_head(per_row: Tensor, part: str, geo: LayerGeometry) -> Tensor:
    """A per-row quantity of a q/k/v (or fused qkv) projection summed over each query head's rows (``[H]``); the
    rows of a KV head count ``1/G`` to each of the ``G`` query heads that share it."""
    out = torch.zeros(geo.num_heads, dtype=per_row.dtype, device=per_row.device)
    for kind, where in part_rows(part, geo).items():
        per_head = per_row[where].reshape(-1, geo.head_dim).sum(1)  # [H] for q, [KV] for k / v
        out += per_head if kind == "q" else per_head.repeat_interleave(geo.group_size) / geo.group_size
    return out


def projections(adapter: Adapter, layer: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """``(o_proj, down_proj)`` of a layer that still has both (a layer emptied by pruning has neither)."""
    o_proj, down_proj = adapter.out_projections(layer)
    if o_proj is None or down_proj is None:
        raise ValueError("this layer has no attention or no MLP left to score or repair")
    return o_proj, down_proj


def head_columns(geo: LayerGeometry, heads: Tensor) -> Tensor:
    """Input columns of ``o_proj`` that belong to the kept query heads: ``[h*D_h, (h+1)*D_h)``."""
    return (heads[:, None] * geo.head_dim + torch.arange(geo.head_dim)).reshape(-1)


def residual_adapter(adapter: Adapter, method: str, rotates: bool = False) -> ResidualAdapter:
    """``adapter`` as a ``ResidualAdapter``, or a clear error naming the method that needs one. ``rotates``: the
    method rotates the residual stream (SliceGPT), which needs ``adapter.rotation_invariant``."""
    from numprune.errors import NumpruneError

    missing = [m for m in ("embedding", "lm_head", "to_sliced_", "remove_layers_") if not hasattr(adapter, m)]
    if missing:
        raise NumpruneError(f"{method} rewrites the residual stream; the {adapter.name} adapter does not support it")
    if rotates and not getattr(adapter, "rotation_invariant", False):
        raise NumpruneError(
            f"{method} rotates the residual stream, which the {adapter.name} layout does not allow (norms on the "
            f"blocks' outputs, or not RMSNorm)"
        )
    return adapter  # type: ignore[return-value]
