"""SliceGPT (Ashkboos et al., ICLR 2024): rotate the residual stream into its principal directions, layer by
layer, and delete the least significant ones: rows or columns of every weight that touches the residual.

Written from the paper and the official code's algorithm (microsoft/TransformerCompression,
``slicegpt/layernorm_fusion.py`` ``fuse_modules`` and ``slicegpt/rotate.py`` ``rotate_and_slice_sequential``):

1. untie ``lm_head`` from the embedding (they get different rotations) and fold every RMSNorm weight into the
   layers that read it; the weightless norms left behind divide by the dense width (the official ``RMSN``);
2. ``Q_0`` = PCA of the first layer's inputs; embedding ``E Q_0``;
3. per layer, on the calibration activations of the model sliced so far: q/k/v read in ``Q_in``; ``Q_mid`` = PCA
   of the residual between attention and MLP -> o_proj writes and gate/up read in ``Q_mid``, attention shortcut
   ``Q_mid^T Q_in``; ``Q_out`` = PCA of the layer's outputs -> down_proj writes in ``Q_out``, MLP shortcut
   ``Q_out^T Q_mid``;
4. ``lm_head`` reads in the last ``Q_out``; the last layer writes the full width (the head is not sliced, the
   official default).

One width ``d`` everywhere (the official ``ConstSlicingScheduler``), chosen as the multiple of ``round_to``
whose attention+MLP parameters *plus* the ``2L`` shortcut matrices remove the fraction of the dense attention+MLP
parameters closest to the asked ratio. What differs from the official code is listed in docs/quality.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from numprune.adapters.base import Adapter, LayerGeometry, ResidualAdapter, residual_adapter
from numprune.calibrate import GramAccumulator, LayerwiseRunner, record_inputs
from numprune.config import PruneConfig
from numprune.errors import NumpruneError
from numprune.methods.base import Method, Transformed
from numprune.plan import LayerPlan
from numprune.rotate import fold_norm, kept_fraction, principal_basis, read_rotated, shortcut, write_rotated


def residual_dims(hidden: int, num_layers: int, dim: int) -> list[int]:
    """The constant schedule: width ``dim`` at the embedding and after every block but the last, which writes
    the full ``hidden`` width for ``lm_head`` (``[emb, mid_0, out_0, ..., mid_{L-1}, out_{L-1}]``)."""
    return [dim] * (2 * num_layers) + [hidden]


def shortcut_params(dims: list[int]) -> int:
    """Parameters of the ``2L`` shortcut matrices (``in x mid`` and ``mid x out`` per layer)."""
    return sum(dims[i] * dims[i + 1] for i in range(len(dims) - 1))


def sliced_params(geos: list[LayerGeometry], dims: list[int]) -> int:
    """Attention + MLP parameters of the sliced layers plus the shortcut matrices (what the ratio counts)."""
    blocks = sum(g.residual_params(*dims[2 * i : 2 * i + 3]) for i, g in enumerate(geos))
    return blocks + shortcut_params(dims)


def slicing_dim(geos: list[LayerGeometry], ratio: float, step: int = 1) -> int:
    """The width (a multiple of ``step``) whose removed attention+MLP(+shortcut) fraction is closest to
    ``ratio``; ties go to the wider one."""
    hidden, total = geos[0].hidden, sum(g.params for g in geos)
    dims = range(hidden - hidden % step, 0, -step)
    return min(dims, key=lambda d: abs(1 - sliced_params(geos, residual_dims(hidden, len(geos), d)) / total - ratio))


def _set_weight(module: nn.Linear | nn.Embedding, weight: Tensor, bias: Tensor | None = None) -> None:
    old = module.weight
    module.weight = nn.Parameter(weight.to(dtype=old.dtype, device=old.device), requires_grad=old.requires_grad)
    if isinstance(module, nn.Embedding):
        module.embedding_dim = weight.shape[1]
        return
    module.out_features, module.in_features = weight.shape
    if bias is not None and module.bias is not None:
        module.bias = nn.Parameter(bias.to(module.bias), requires_grad=module.bias.requires_grad)


def _read_in(lin: nn.Linear, basis: Tensor) -> None:
    _set_weight(lin, read_rotated(lin.weight.double(), basis))


def _write_in(lin: nn.Linear, basis: Tensor) -> None:
    bias = None if lin.bias is None else write_rotated(lin.bias.double(), basis)
    _set_weight(lin, write_rotated(lin.weight.double(), basis), bias)


def _gram(xs: list[Tensor], name: str) -> Tensor:
    acc = GramAccumulator(name)
    for x in xs:
        acc.add_batch(x)
    return acc.stats().gram


@torch.no_grad()
def fuse_norms_(model: nn.Module, adapter: ResidualAdapter) -> None:
    """Step 1: untie ``lm_head``, fold every RMSNorm weight into its readers, weightless norms and identity
    shortcuts in place (``adapter.to_sliced_``). The model computes the same function."""
    layers = adapter.layers(model)
    norms = [tuple(w.detach().clone() for w in adapter.norm_weights(layer)) for layer in layers]
    final = adapter.final_norm_weight(model).detach().clone()
    try:
        adapter.to_sliced_(model)
    except ValueError as err:
        raise NumpruneError(str(err)) from None
    head = adapter.lm_head(model)
    _set_weight(head, fold_norm(head.weight.detach().double(), final))  # a new tensor: unties the embedding
    for layer, (g_attn, g_mlp) in zip(adapter.layers(model), norms):
        for lin, _ in adapter.attn_in(layer):
            _set_weight(lin, fold_norm(lin.weight.double(), g_attn))
        for lin in adapter.mlp_in(layer):
            _set_weight(lin, fold_norm(lin.weight.double(), g_mlp))


@torch.no_grad()
def rotate_and_slice_(
    model: nn.Module,
    adapter: ResidualAdapter,
    calibration: Tensor,
    dims: list[int],
    device: torch.device,
    progress: bool = False,
) -> list[float]:
    """Steps 1-4 in place, to the residual widths ``dims`` (``2L + 1`` entries); returns the share of the
    residual's mean squared norm kept at each of the ``2L + 1`` slicing points. ``dims`` all equal to the
    hidden size rotates without slicing (the same function up to rounding)."""
    from numprune.sliced_model import SlicedDecoderLayer  # transformers: imported when a model is sliced

    layers = adapter.layers(model)
    if len(dims) != 2 * len(layers) + 1:
        raise NumpruneError(f"residual_dims needs {2 * len(layers) + 1} entries, got {len(dims)}")
    fuse_norms_(model, adapter)
    runner = LayerwiseRunner(model, adapter, calibration, device, progress)
    values, q = principal_basis(_gram(runner.hidden, "layer 0 input"))
    basis = q[:, : dims[0]]
    kept = [kept_fraction(values, dims[0])]
    emb = adapter.embedding(model)
    _set_weight(emb, read_rotated(emb.weight.double(), basis))
    runner.hidden = [(h.double() @ basis).to(h.dtype) for h in runner.hidden]

    def visit(i: int, layer: nn.Module) -> list[Tensor]:
        nonlocal basis
        d_mid, d_out = dims[2 * i + 1], dims[2 * i + 2]
        o_proj, down = adapter.out_projections(layer)
        if o_proj is None or down is None or not isinstance(layer, SlicedDecoderLayer):
            raise NumpruneError(f"layer {i} has no attention or MLP block to rotate")
        for lin, _ in adapter.attn_in(layer):
            _read_in(lin, basis)
        _set_weight(layer.attn_shortcut, basis)  # back to the dense coordinates until Q_mid is known
        with record_inputs({"mid": layer.post_attention_layernorm}, prefix=f"layer {i} ") as accs:
            runner.forward(layer)
        values, q = principal_basis(accs["mid"].stats().gram)
        mid = q[:, :d_mid]
        _write_in(o_proj, mid)
        _set_weight(layer.attn_shortcut, shortcut(basis, mid))
        for lin in adapter.mlp_in(layer):
            _read_in(lin, mid)
        _set_weight(layer.mlp_shortcut, mid)
        outs = runner.forward(layer)  # through the sliced attention: the official interleaving
        values_out, q = principal_basis(_gram(outs, f"layer {i} output"))
        out = q[:, :d_out]
        _write_in(down, out)
        _set_weight(layer.mlp_shortcut, shortcut(mid, out))
        kept.extend([kept_fraction(values, d_mid), kept_fraction(values_out, d_out)])
        basis = out
        return [(y.double() @ out).to(y.dtype) for y in outs]

    runner.walk(visit, desc="slicegpt")
    _read_in(adapter.lm_head(model), basis)
    config: Any = model.config  # the sliced config to_sliced_ set
    config.residual_dims = list(dims)
    return kept


class SliceGPT(Method):
    """SliceGPT with PCA rotations and the constant slicing schedule (ratio = attention+MLP+shortcut params)."""

    name = "slicegpt"
    scoring = "transform"

    def transform_(self, model: nn.Module, adapter: Adapter, calibration: Tensor, cfg: PruneConfig) -> Transformed:
        try:
            ra = residual_adapter(adapter, self.name, rotates=True)
        except NumpruneError as err:
            from numprune.adapters import hf_adapters

            ok = ", ".join(a.name for a in hf_adapters() if a.rotation_invariant)
            raise NumpruneError(f"{err}; it supports the families {ok}") from None
        geos = [adapter.geometry(layer) for layer in adapter.layers(model)]
        hidden = geos[0].hidden
        dim = slicing_dim(geos, cfg.ratio, cfg.round_to)
        dims = residual_dims(hidden, len(geos), dim)
        device = torch.device(cfg.device) if cfg.device else next(model.parameters()).device
        kept = rotate_and_slice_(model, ra, calibration, dims, device, cfg.progress)
        total, after = sum(g.params for g in geos), sliced_params(geos, dims)
        achieved: dict[str, float | int] = {
            "params_ratio": 1 - after / total,
            "units_ratio": 1 - dim / hidden,  # the slicing fraction of the residual stream (the paper's "slicing")
            "attn_mlp_params_total": total,
            "attn_mlp_params_removed": total - after,
            "shortcut_params": shortcut_params(dims),
            "attn_units_total": sum(g.num_heads for g in geos),
            "attn_units_pruned": 0,
            "heads_total": sum(g.num_heads for g in geos),
            "heads_pruned": 0,
            "kv_heads_pruned": 0,
            "channels_total": sum(g.intermediate for g in geos),
            "channels_pruned": 0,
        }
        layers = [
            LayerPlan(list(range(g.num_heads)), list(range(g.num_kv_heads)), list(range(g.intermediate))) for g in geos
        ]
        record = {"kind": "slicegpt", "hidden": hidden, "dim": dim, "residual_dims": dims, "variance_kept": kept}
        return Transformed(layers=layers, achieved=achieved, transform=record)
