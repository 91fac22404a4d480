"""The passes over a model that ``prune_`` runs: the dense scoring pass, shared dense statistics, and the
repair + surgery pass (from cached dense statistics, a dense re-pass, or sequentially through pruned layers)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from numprune.adapters import Adapter, LayerGeometry, get_adapter
from numprune.adapters.base import head_columns, projections
from numprune.calibrate import InputStats, LayerwiseRunner, Reduce, check_calibration, record_inputs
from numprune.config import PruneConfig
from numprune.errors import NumpruneError
from numprune.methods import LayerScores, Method
from numprune.plan import LayerPlan
from numprune.surgery import prune_attention_, prune_mlp_
from numprune.timing import stage


def score_pass(
    model: nn.Module,
    adapter: Adapter,
    meth: Method,
    cfg: PruneConfig,
    calibration: Tensor,
    device: torch.device,
    geos: list[LayerGeometry],
    dense_stats: list[dict[str, InputStats]] | None = None,
    reduce: Reduce | None = None,
) -> tuple[list[LayerScores], list[dict[str, InputStats]] | None]:
    if dense_stats is not None:
        if len(dense_stats) != len(geos) or any(
            st["down_proj"].gram.shape[0] != g.intermediate or st["o_proj"].gram.shape[0] != g.num_heads * g.head_dim
            for st, g in zip(dense_stats, geos)
        ):
            raise NumpruneError("dense_stats do not match this model's layers")
        dense_scores = []
        for i, layer in enumerate(adapter.layers(model)):
            o_proj, down_proj = projections(adapter, layer)
            st = {k: v.to(o_proj.weight.device) for k, v in dense_stats[i].items()}
            with stage("score"):
                dense_scores.append(meth.score(st, o_proj.weight, down_proj.weight, geos[i], cfg))
        return dense_scores, dense_stats if cfg.compensation == "dense" else None
    runner = LayerwiseRunner(model, adapter, calibration, device, cfg.progress, reduce, cfg.offload_activations)
    scores: list[LayerScores] = []
    stats_bytes = sum(8 * g.gram_elements for g in geos)
    keep_stats = cfg.compensation == "dense" and stats_bytes <= cfg.stats_cache_gib * 2**30
    cache: list[dict[str, InputStats]] | None = [] if keep_stats else None

    def visit(i: int, layer: nn.Module) -> list[Tensor]:
        stats, out = runner.collect(layer, i)
        o_proj, down_proj = projections(adapter, layer)
        with stage("score"):
            scores.append(meth.score(stats, o_proj.weight, down_proj.weight, geos[i], cfg))
        if cache is not None:
            cache.append({k: v.to("cpu") for k, v in stats.items()})
        return out  # the dense outputs feed the next layer

    runner.walk(visit, desc=f"{meth.name}: calibrate + score")
    return scores, cache


@torch.no_grad()
def streaming_statistics(
    model: nn.Module,
    calibration: Tensor,
    batch_size: int = 8,
    reduce: Reduce | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> list[dict[str, InputStats]]:
    """The dense input statistics of every layer's ``o_proj`` / ``down_proj`` from whole-model forwards over
    batches of samples (on the CPU afterwards).

    Memory is the model plus one batch plus the Gram matrices, whatever the number of samples: the mode for
    calibration sets too large for ``LayerwiseRunner``, which keeps every sample's hidden states (LlamaGen's 128
    images x 1000 classes). The model must fit on ``device`` (default: where it is), where it runs for the pass
    and from where it returns. Equal to the layerwise statistics.
    """
    adapter = get_adapter(model)
    calibration = check_calibration(calibration)
    home = next(model.parameters()).device
    device = torch.device(device) if device else home
    model.to(device)
    modules: dict[str, nn.Module | None] = {}
    for i, layer in enumerate(adapter.layers(model)):
        o_proj, down_proj = projections(adapter, layer)
        modules[f"layer {i} o_proj"], modules[f"layer {i} down_proj"] = o_proj, down_proj
    try:
        with record_inputs(modules, buffer_tokens=0) as accs:  # every layer's at once: no buffers
            starts = range(0, calibration.shape[0], batch_size)
            for start in tqdm(starts, desc="calibration (streaming)", disable=not progress, leave=False):
                adapter.run_model(model, calibration[start : start + batch_size].to(device))
    finally:
        model.to(home)
    if reduce is not None:
        for acc in accs.values():
            acc.reduce_(reduce)
    n = len(adapter.layers(model))
    return [{k: accs[f"layer {i} {k}"].stats().to("cpu") for k in ("o_proj", "down_proj")} for i in range(n)]


@torch.no_grad()
def dense_statistics(
    model: nn.Module, calibration: Tensor, device: str | None = None, progress: bool = False
) -> list[dict[str, InputStats]]:
    """Per layer, the dense input statistics of ``o_proj`` / ``down_proj`` (on the CPU): the pass ``prune_``
    starts with, computed once so that a grid of methods and ratios on the same model can share it."""
    adapter = get_adapter(model)
    dev = torch.device(device) if device else next(model.parameters()).device
    runner = LayerwiseRunner(model, adapter, check_calibration(calibration), dev, progress=progress)
    out: list[dict[str, InputStats]] = []

    def visit(i: int, layer: nn.Module) -> list[Tensor]:
        stats, hidden = runner.collect(layer, i)
        out.append({k: v.to("cpu") for k, v in stats.items()})
        return hidden

    runner.walk(visit, desc="dense statistics")
    return out


def cut_layer_(
    adapter: Adapter,
    meth: Method,
    cfg: PruneConfig,
    layer: nn.Module,
    geo: LayerGeometry,
    plan: LayerPlan,
    stats: dict[str, InputStats],
    parts: tuple[str, ...],
    output_bias: bool,
) -> None:
    """The method's repair of one layer's output projections (from ``stats``, when it reads them) and the
    surgery of the named ``parts`` (``attn``, ``mlp``)."""
    o_proj, down_proj = adapter.out_projections(layer)  # one is None once its block was cut to nothing
    use = meth.needs_stats(cfg)
    if "attn" in parts:
        assert o_proj is not None, "the attention of this layer was already cut"
        heads = torch.tensor(plan.heads, dtype=torch.long)
        cols = head_columns(geo, heads)
        st = _on(stats.get("o_proj"), o_proj.weight) if use else None
        with stage("repair"):
            w, b = meth.repair(st, o_proj.weight, cols.to(o_proj.weight.device), cfg)
        kv = torch.tensor(plan.kv_heads, dtype=torch.long)
        with stage("surgery"):
            prune_attention_(adapter, layer, geo, heads, kv, w, b, output_bias=output_bias, mask_only=cfg.mask_only)
    if "mlp" in parts:
        assert down_proj is not None, "the MLP of this layer was already cut"
        ch = torch.tensor(plan.channels, dtype=torch.long)
        st = _on(stats.get("down_proj"), down_proj.weight) if use else None
        with stage("repair"):
            w, b = meth.repair(st, down_proj.weight, ch.to(down_proj.weight.device), cfg)
        with stage("surgery"):
            prune_mlp_(adapter, layer, ch, w, b, output_bias=output_bias, mask_only=cfg.mask_only)


def sequential_repair_(
    runner: LayerwiseRunner,
    adapter: Adapter,
    meth: Method,
    cfg: PruneConfig,
    i: int,
    layer: nn.Module,
    geo: LayerGeometry,
    plan: LayerPlan,
    output_bias: bool,
    first: dict[str, InputStats] | None = None,
) -> list[Tensor] | None:
    """Repair and cut one layer on the inputs that reach it through the already pruned layers: ``o_proj`` from
    the layer as it is (``first``: its statistics; else each sample runs up to ``o_proj``, inputs kept), then
    ``down_proj`` (bypassed; only its Gram's kept rows if the repair reads no more) through the pruned attention
    (replayed from those inputs, q/k/v and attention not run again). Returns the outputs (None: a forward)."""
    if not meth.needs_stats(cfg):
        cut_layer_(adapter, meth, cfg, layer, geo, plan, {}, ("attn", "mlp"), output_bias)
        return None
    first, inputs = (first, None) if first is not None else runner.collect_until(layer, i, "o_proj", True)
    cut_layer_(adapter, meth, cfg, layer, geo, plan, first, ("attn",), output_bias)
    replay = None if inputs is None else runner.attention_replay(layer, i, inputs, geo, plan.heads)
    channels = torch.tensor(plan.channels, dtype=torch.long)
    second, partial = runner.collect_bypassed(layer, i, "down_proj", channels, replay, meth.repair_reads_kept_rows)
    cut_layer_(adapter, meth, cfg, layer, geo, plan, second, ("mlp",), output_bias)
    return None if partial is None else runner.complete(layer, partial, channels, cfg.mask_only)


def sequential_score_pass(
    model: nn.Module,
    adapter: Adapter,
    meth: Method,
    cfg: PruneConfig,
    calibration: Tensor,
    device: torch.device,
    geos: list[LayerGeometry],
    plan_layer: Callable[[int, LayerScores], LayerPlan],
    output_bias: bool,
    reduce: Reduce | None = None,
) -> list[LayerScores]:
    """Scores of per-layer methods (``scoring == "sequential"``): each layer is scored on the inputs that
    reach it through the already pruned earlier layers. The model is not modified: each layer is pruned in a
    copy (``plan_layer`` turns its scores into its kept units), which feeds the next layer."""
    runner = LayerwiseRunner(model, adapter, calibration, device, cfg.progress, reduce, cfg.offload_activations)
    scores: list[LayerScores] = []

    def visit(i: int, layer: nn.Module) -> list[Tensor]:
        work = copy.deepcopy(layer)
        if meth.mlp_after_attention:
            scores.append(_attention_then_mlp(runner, adapter, meth, cfg, i, work, geos[i], plan_layer, output_bias))
            return runner.forward(work)
        stats, _ = runner.collect(work, i)
        o_proj, down_proj = projections(adapter, work)
        with stage("score"):
            scores.append(meth.score(stats, o_proj.weight, down_proj.weight, geos[i], cfg))
        plan = plan_layer(i, scores[-1])
        out = sequential_repair_(runner, adapter, meth, cfg, i, work, geos[i], plan, output_bias, first=stats)
        return out if out is not None else runner.forward(work)

    runner.walk(visit, desc=f"{meth.name}: sequential calibrate + score")
    return scores


def _attention_then_mlp(
    runner: LayerwiseRunner,
    adapter: Adapter,
    meth: Method,
    cfg: PruneConfig,
    i: int,
    work: nn.Module,
    geo: LayerGeometry,
    plan_layer: Callable[[int, LayerScores], LayerPlan],
    output_bias: bool,
) -> LayerScores:
    """Score, select and cut a layer's attention, then score its MLP on the inputs through that pruned attention
    (SlimGPT's order); ``work`` is left pruned. Uniform selection counts each layer's units from its ratio alone,
    so the attention choice and the number of channels are known before the channels are scored."""
    o_proj, down_proj = adapter.out_projections(work)
    assert o_proj is not None and down_proj is not None
    first = runner.collect(work, i, names=("o_proj",))[0]
    heads = meth.score_heads(first["o_proj"], o_proj.weight, geo, cfg)
    counts = plan_layer(i, LayerScores(heads=heads, channels=torch.zeros(geo.intermediate, dtype=torch.float64)))
    cut_layer_(adapter, meth, cfg, work, geo, counts, first, ("attn",), output_bias)
    second = runner.collect(work, i, names=("down_proj",))[0]
    n_pruned = geo.intermediate - len(counts.channels)
    channels = meth.score_channels(second["down_proj"], down_proj.weight, geo, cfg, n_pruned)
    scores = LayerScores(heads=heads, channels=channels)
    cut_layer_(adapter, meth, cfg, work, geo, plan_layer(i, scores), second, ("mlp",), output_bias)
    return scores


def apply_pass(
    model: nn.Module,
    adapter: Adapter,
    meth: Method,
    cfg: PruneConfig,
    calibration: Tensor | None,
    device: torch.device,
    geos: list[LayerGeometry],
    plans: list[LayerPlan],
    cache: list[dict[str, InputStats]] | None,
    output_bias: bool,
    reduce: Reduce | None = None,
) -> None:
    """Repair and cut every layer: from cached dense statistics, from a dense re-pass, or sequentially."""
    layers = adapter.layers(model)

    def cut(i: int, layer: nn.Module, stats: dict[str, InputStats], parts: tuple[str, ...]) -> None:
        cut_layer_(adapter, meth, cfg, layer, geos[i], plans[i], stats, parts, output_bias)

    # Methods whose repair is a plain slice (Wanda-sp, magnitude, LLM-Pruner) need no statistics at all.
    needs_stats = meth.needs_stats(cfg)
    if not needs_stats or cache is not None:
        for i, layer in enumerate(layers):
            cut(i, layer, cache[i] if (cache is not None and needs_stats) else {}, ("attn", "mlp"))
        return
    if calibration is None:
        raise NumpruneError(f"{meth.name} with compensation={cfg.compensation!r} needs calibration samples")
    sequential = cfg.compensation == "sequential" or meth.scoring == "sequential"
    runner = LayerwiseRunner(model, adapter, calibration, device, cfg.progress, reduce, cfg.offload_activations,
                             stage_name="sequential_forward" if sequential else "forward")  # fmt: skip
    if sequential:

        def visit(i: int, layer: nn.Module) -> list[Tensor] | None:  # through the already pruned layers
            return sequential_repair_(runner, adapter, meth, cfg, i, layer, geos[i], plans[i], output_bias)

        runner.walk(visit, desc=f"{meth.name}: sequential repair")
    else:

        def visit_dense(i: int, layer: nn.Module) -> list[Tensor]:
            stats, out = runner.collect(layer, i)
            cut(i, layer, stats, ("attn", "mlp"))
            return out  # dense outputs: every layer is repaired against the dense model's inputs

        runner.walk(visit_dense, desc=f"{meth.name}: dense repair")


def _on(stats: InputStats | None, like: Tensor) -> InputStats | None:
    return None if stats is None else stats.to(like.device)
