"""Where a model and a plan come from: parameter counts, a weight fingerprint, library versions, the check
that a plan fits a model, and the configuration a plan was made with."""

from __future__ import annotations

import dataclasses
import hashlib
import resource

import torch
from torch import nn

from numprune.adapters import get_adapter
from numprune.config import PruneConfig
from numprune.errors import NumpruneError
from numprune.plan import PruningPlan


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters counted once (tied embeddings share one tensor)."""
    return list({id(p): p for p in model.parameters()}.values())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in unique_parameters(model))


def embedding_params(model: nn.Module) -> int:
    """Parameters of the token embedding and the output head, counted once when tied (0 without them)."""
    mods = [getattr(model, f, lambda: None)() for f in ("get_input_embeddings", "get_output_embeddings")]
    return sum(p.numel() for p in {id(p): p for m in mods if m is not None for p in m.parameters()}.values())


def config_of(plan: PruningPlan) -> PruneConfig:
    """The ``PruneConfig`` a plan was made with."""
    known = {f.name for f in dataclasses.fields(PruneConfig)}
    return PruneConfig(ratio=plan.ratio, method=plan.method, **{k: v for k, v in plan.options.items() if k in known})


def model_fingerprint(model: nn.Module) -> str:
    """Short hash of a strided sample of every output projection's weights: tells two same-shaped models apart."""
    adapter = get_adapter(model)
    h = hashlib.sha256()
    for layer in adapter.layers(model):
        for proj in adapter.out_projections(layer):
            if proj is not None:
                w = proj.weight.detach().reshape(-1)
                h.update(w[:: max(1, w.numel() // 256)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def check_plan_matches(model: nn.Module, plan: PruningPlan) -> None:
    """Refuse a plan that was made for another model: layer count, dense shapes, weight fingerprint."""
    adapter = get_adapter(model)
    shapes = [adapter.geometry(layer).shape for layer in adapter.layers(model)]
    name = plan.model.get("name_or_path") or "another model"
    if len(shapes) != plan.num_layers or shapes != plan.dense_shapes:
        diff = next((i for i, (a, b) in enumerate(zip(shapes, plan.dense_shapes)) if a != b), None)
        where = f"layer {diff}: model {shapes[diff]}, plan {plan.dense_shapes[diff]}" if diff is not None else ""
        raise NumpruneError(
            f"the pruning plan was made for {name} ({plan.num_layers} layers) and does not fit this model "
            f"({len(shapes)} layers) {where}".strip()
        )
    expected = plan.model.get("fingerprint")
    if expected and expected != model_fingerprint(model):
        raise NumpruneError(
            f"the pruning plan was made for {name} (weight fingerprint {expected}); this model's weights differ "
            f"({model_fingerprint(model)}): score this model, or load the model the plan was made for"
        )


def library_versions() -> dict[str, str]:
    import transformers

    from numprune import __version__

    return {"numprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def compute_device(model: nn.Module, cfg: PruneConfig, reset_peak: bool = False) -> torch.device:
    """Where a run calibrates: ``cfg.device``, else where the model is (peak device memory reset on request)."""
    device = torch.device(cfg.device) if cfg.device else next(model.parameters()).device
    if reset_peak and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return device


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak RSS of this process and, on CUDA, peak device memory (GiB)."""
    peak = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        peak["peak_device_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return peak
