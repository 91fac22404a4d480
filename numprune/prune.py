"""``prune_``: the one pipeline that the CLI, the Lightning callbacks, the experiments and the tests call.

Lifecycle: dense calibration pass (statistics -> per-layer scores) -> global or uniform selection ->
repair (compensation from the dense statistics, or re-propagated sequentially) -> surgery -> config.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import Tensor, nn

from numprune.adapters import Adapter, LayerGeometry, get_adapter, per_token_record
from numprune.calibrate import InputStats, Reduce, check_calibration
from numprune.config import PruneConfig, make_config
from numprune.errors import NumpruneError
from numprune.methods import LayerScores, Method, get_method, options_of
from numprune.passes import apply_pass, dense_statistics, score_pass, sequential_score_pass, streaming_statistics
from numprune.plan import LayerPlan, PruningPlan
from numprune.provenance import (
    check_plan_matches,
    compute_device,
    config_of,
    count_params,
    embedding_params,
    library_versions,
    model_fingerprint,
    peak_memory,
)
from numprune.select import LayerUnits, Selection, attention_units, effective_gqa, gqa_mode, kept_heads, select_units
from numprune.timing import recorded, stage

__all__ = ["PruneConfig", "Reduce", "apply_plan_", "count_params", "dense_statistics", "plan_pruning", "prune_"]


@torch.no_grad()
def prune_(
    model: nn.Module,
    *,
    ratio: float,
    calibration: Tensor,
    method: str = "numerical",
    calibration_info: dict | None = None,
    dense_stats: list[dict[str, InputStats]] | None = None,
    **options,
) -> PruningPlan:
    """Prune ``model`` in place and return the plan (paper Algorithm 1, Eq. 8 and Eq. 11 for ``numerical``).

    ``plan_pruning`` then ``apply_plan_``; the Lightning scoring and compensation callbacks call the same two.

    Args:
        model: a supported causal LM (LLaMA-family, LlamaGen), on any device.
        ratio: fraction of attention+MLP parameters (or units, ``ratio_of="units"``) to remove, in ``[0, 1)``.
        calibration: ``[nsamples, seqlen]`` token ids.
        method: registered method name (``numerical``, ...).
        calibration_info: how the calibration tensor was made (dataset, source, seed); stored in the plan.
        dense_stats: ``dense_statistics(model, calibration)`` computed before, on this dense model and this
            calibration (grids share one pass across methods and ratios); replaces the dense pass.
        **options: any other ``PruneConfig`` field.

    Methods that rewrite the model (``scoring="transform"``: ``slicegpt``, ``depth``) run their own pass
    instead (``numprune.transform``); ``dense_stats`` is then not used.
    """
    cfg = make_config(ratio, method, **options)
    meth = get_method(cfg.method)
    if meth.scoring == "transform":
        from numprune.transform import transform_model_

        return transform_model_(model, calibration, cfg, meth, calibration_info)
    plan, stats = plan_pruning(model, calibration, cfg, calibration_info=calibration_info, dense_stats=dense_stats)
    apply_plan_(model, plan, calibration, cfg, stats=stats)
    return plan


@torch.no_grad()
def plan_pruning(
    model: nn.Module,
    calibration: Tensor,
    cfg: PruneConfig,
    *,
    calibration_info: dict | None = None,
    reduce: Reduce | None = None,
    dense_stats: list[dict[str, InputStats]] | None = None,
) -> tuple[PruningPlan, list[dict[str, InputStats]] | None]:
    """Phase 1: dense calibration pass -> statistics -> scores -> selection (Algorithm 1, Eq. 8).

    The model is not modified. Returns the plan and the dense statistics when ``cfg`` keeps them for the
    compensation (else None: ``apply_plan_`` recomputes them). With ``reduce`` (distributed calibration) every
    process passes its own shard of the samples; the Gram matrices are summed, so every process gets the plan
    of the whole calibration set.
    """
    adapter = get_adapter(model)
    meth = get_method(cfg.method)
    _refuse_transform(meth)
    cfg = meth.resolve(cfg)
    meth.check(cfg)
    calibration = check_calibration(calibration)
    device = compute_device(model, cfg, reset_peak=True)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    layers = adapter.layers(model)
    geos = [adapter.geometry(layer) for layer in layers]
    for i, geo in enumerate(geos):
        if geo.num_heads == 0 or geo.intermediate == 0:
            raise NumpruneError(f"layer {i} has no attention heads or no MLP channels left to score")

    # Scores: from the dense pass (the global ranking needs every layer's scores before any mask), through
    # the already pruned layers (per-layer methods), or from the method's own pass (gradients, weights).
    allocation = cfg.allocation or meth.default_allocation
    layer_ratios = meth.layer_ratios(cfg.ratio, len(geos)) if allocation == "uniform" else None

    def plan_layer(i: int, s: LayerScores) -> LayerPlan:  # per-layer selection of one layer (sequential)
        ratios = None if layer_ratios is None else [layer_ratios[i]]
        return _layer_plans([s], [geos[i]], _select([s], [geos[i]], cfg, allocation, ratios), cfg)[0]

    cache: list[dict[str, InputStats]] | None = None
    if meth.scoring == "model":
        scores = meth.score_model(model, adapter, calibration, cfg)  # runs where the model is
        if len(scores) != len(geos):
            raise NumpruneError(f"{meth.name}.score_model returned {len(scores)} layers, expected {len(geos)}")
    elif meth.scoring == "sequential":
        bias = output_bias(model, adapter, meth, cfg)
        scores = sequential_score_pass(model, adapter, meth, cfg, calibration, device, geos, plan_layer, bias, reduce)
    else:
        if dense_stats is None and cfg.calibration_mode == "streaming":
            dense_stats = streaming_statistics(model, calibration, cfg.calibration_batch, reduce, cfg.progress, device)
        scores, cache = score_pass(model, adapter, meth, cfg, calibration, device, geos, dense_stats, reduce)
    model.train(was_training)

    with stage("select"):
        units = [attention_units(s.heads, g, cfg.gqa) for s, g in zip(scores, geos)]
        sel = _select(scores, geos, cfg, allocation, layer_ratios)
        _check_reached(sel, cfg, _layer_units(scores, geos, cfg), allocation)
        plans = _layer_plans(scores, geos, sel, cfg)

    params_before = count_params(model)
    gqa = effective_gqa(cfg.gqa, geos)
    if gqa != cfg.gqa:
        warnings.warn(f"gqa='{cfg.gqa}' prunes no attention in layers with one KV head: they prune query heads "
                      f"within the group (gqa_effective='{gqa}' in the plan)", stacklevel=2)  # fmt: skip
    achieved = {
        "params_ratio": sel.params_ratio,
        "units_ratio": sel.units_ratio,
        "attn_mlp_params_total": sel.params_total,
        "attn_mlp_params_removed": sel.params_removed,
        "attn_units_total": sum(u.numel() for u, _, _ in units),
        "attn_units_pruned": sum(u.numel() - k.numel() for (u, _, _), k in zip(units, sel.kept_attn)),
        "heads_total": sum(g.num_heads for g in geos),
        "heads_pruned": sum(g.num_heads - len(p.heads) for g, p in zip(geos, plans)),
        "kv_heads_pruned": sum(g.num_kv_heads - len(p.kv_heads) for g, p in zip(geos, plans)),
        "channels_total": sum(g.intermediate for g in geos),
        "channels_pruned": sum(g.intermediate - len(p.channels) for g, p in zip(geos, plans)),
        "model_params_before": params_before,
        "model_params_after": params_before - sel.params_removed,  # apply_plan_ records the exact count
        **per_token_record(geos, plans, next(model.parameters()).element_size()),  # what the heads bought
        "embedding_params": embedding_params(model),
        "gqa_effective": gqa,
    }
    plan = PruningPlan(
        layers=plans,
        dense_shapes=[g.shape for g in geos],
        method=cfg.method,
        ratio=cfg.ratio,
        options=options_of(cfg),
        achieved=achieved,
        calibration={"nsamples": calibration.shape[0], "seqlen": calibration.shape[1], **(calibration_info or {})},
        model={
            "name_or_path": str(getattr(model.config, "_name_or_path", "")) if hasattr(model, "config") else "",
            "adapter": adapter.name,
            "num_layers": len(geos),
            "fingerprint": model_fingerprint(model),
        },
        timing={"score_seconds": time.perf_counter() - start},
        versions=library_versions(),
    )
    return plan, cache


@torch.no_grad()
def apply_plan_(
    model: nn.Module,
    plan: PruningPlan,
    calibration: Tensor | None = None,
    cfg: PruneConfig | None = None,
    *,
    stats: list[dict[str, InputStats]] | None = None,
    reduce: Reduce | None = None,
) -> PruningPlan:
    """Phase 2: the method's repair (compensation, Eq. 11) and the surgery, in place; returns ``plan`` with the
    exact parameter count and timings filled in.

    ``cfg`` defaults to the plan's own options. The repair reads ``stats`` (from ``plan_pruning``) when given,
    else recomputes them from ``calibration`` (needed unless ``compensation="none"``). A plan made for another
    model (other shapes or other weights) is refused.
    """
    cfg = cfg or config_of(plan)
    check_plan_matches(model, plan)
    adapter = get_adapter(model)
    meth = get_method(cfg.method)
    _refuse_transform(meth)
    cfg = meth.resolve(cfg)
    device = compute_device(model, cfg)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    layers = adapter.layers(model)
    geos = [adapter.geometry(layer) for layer in layers]
    meth.check(cfg)
    if meth.needs_stats(cfg) and stats is None and calibration is None:
        raise NumpruneError(
            f"{meth.name} with compensation={cfg.compensation!r} needs calibration samples or the plan's statistics"
        )
    if calibration is not None:
        calibration = check_calibration(calibration)
    bias = output_bias(model, adapter, meth, cfg)
    apply_pass(model, adapter, meth, cfg, calibration, device, geos, plan.layers, stats, bias, reduce)
    if not cfg.mask_only:
        with stage("surgery"):
            adapter.finalize(model, [adapter.geometry(layer) for layer in layers], bias)
        plan.achieved["model_params_after"] = count_params(model)
    model.train(was_training)
    plan.timing["apply_seconds"] = time.perf_counter() - start
    plan.timing["prune_seconds"] = plan.timing.get("score_seconds", 0.0) + plan.timing["apply_seconds"]
    plan.timing.update(peak_memory(device))
    plan.timing.update(recorded())  # stage times when a numprune.timing.StageTimer is active
    return plan


def _refuse_transform(meth: Method) -> None:
    if meth.scoring == "transform":
        raise NumpruneError(f"{meth.name} rewrites the model in one pass, without a head/channel plan: call prune_")


def output_bias(model: nn.Module, adapter: Adapter, meth: Method, cfg: PruneConfig) -> bool:
    """Whether the pruned model's output projections carry biases (the method adds them, or they had them)."""
    projections = (p for layer in adapter.layers(model) for p in adapter.out_projections(layer))
    return meth.adds_bias(cfg) or any(p is not None and p.bias is not None for p in projections)


def _layer_plans(
    scores: list[LayerScores], geos: list[LayerGeometry], sel: Selection, cfg: PruneConfig
) -> list[LayerPlan]:
    plans = []
    for s, g, ka, km in zip(scores, geos, sel.kept_attn, sel.kept_mlp):
        u = attention_units(s.heads, g, cfg.gqa)[0]
        q, kv = kept_heads(s.heads, g, cfg.gqa, ka, u.numel())
        plans.append(LayerPlan(heads=q.tolist(), kv_heads=kv.tolist(), channels=km.tolist()))
    return plans


def _layer_units(scores: list[LayerScores], geos: list[LayerGeometry], cfg: PruneConfig) -> list[LayerUnits]:
    out = []
    for s, g in zip(scores, geos):
        u, cost, fixed = attention_units(s.heads, g, cfg.gqa)
        out.append(LayerUnits(attn_scores=u, attn_cost=cost, mlp_scores=s.channels, mlp_cost=g.channel_params,
                              fixed=fixed, attn_errors=s.head_errors, mlp_errors=s.channel_errors))  # fmt: skip
    return out


def _select(
    scores: list[LayerScores],
    geos: list[LayerGeometry],
    cfg: PruneConfig,
    allocation: str,
    layer_ratios: list[float] | None,
) -> Selection:
    """Eq. 8 (global) or per-layer selection over the layers scored so far."""
    try:
        return select_units(
            _layer_units(scores, geos, cfg),
            cfg.ratio,
            ratio_of=cfg.ratio_of,
            allocation=allocation,  # type: ignore[arg-type]
            head_scaling=get_method(cfg.method).head_scaling(cfg),
            # query mode: every group keeps >= 1 query head by construction; min_heads counts heads per group
            min_attn=cfg.min_heads if gqa_mode(cfg.gqa, geos[0]) == "groups" else max(cfg.min_heads - 1, 0),
            min_mlp=cfg.min_channels,
            round_to=cfg.round_to,
            layer_ratios=None if layer_ratios is None else layer_ratios[: len(scores)],
            rounding=cfg.rounding or get_method(cfg.method).default_rounding,
        )
    except ValueError as err:
        raise NumpruneError(str(err)) from None


def _check_reached(sel: Selection, cfg: PruneConfig, layers: list[LayerUnits], allocation: str) -> None:
    """Refuse a ratio that the per-layer minimums make unreachable (it would empty a layer)."""
    if allocation == "uniform":
        return
    achieved = sel.params_ratio if cfg.ratio_of == "params" else sel.units_ratio
    slack = max(max(lu.attn_cost, lu.mlp_cost) for lu in layers) / sel.params_total if cfg.ratio_of == "params" else 0
    if achieved + slack + 1e-9 < cfg.ratio:
        raise NumpruneError(
            f"ratio {cfg.ratio} would empty a layer (reached {achieved:.4f} with min_heads={cfg.min_heads}, "
            f"min_channels={cfg.min_channels}); lower the ratio or allow empty layers with min 0"
        )
