"""The pipeline of the methods that rewrite the model (``scoring == "transform"``: SliceGPT, depth pruning).

``prune_`` calls ``transform_model_`` instead of ``plan_pruning`` + ``apply_plan_``: the method's ``transform_``
changes the model in one pass, and this wraps what it did into the same ``PruningPlan`` as every other method
(options after defaults, calibration, model fingerprint before the change, exact parameter counts, timing).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from numprune.adapters import get_adapter
from numprune.adapters.base import per_token_costs, per_token_record
from numprune.calibrate import check_calibration
from numprune.config import PruneConfig
from numprune.errors import NumpruneError
from numprune.methods import Method, options_of
from numprune.plan import PruningPlan
from numprune.provenance import compute_device, count_params, library_versions, model_fingerprint, peak_memory


@torch.no_grad()
def transform_model_(
    model: nn.Module, calibration: Tensor, cfg: PruneConfig, meth: Method, calibration_info: dict | None = None
) -> PruningPlan:
    """Run ``meth.transform_`` on ``model`` (in place) and return its plan."""
    adapter = get_adapter(model)
    cfg = meth.resolve(cfg)
    meth.check(cfg)
    calibration = check_calibration(calibration)
    device = compute_device(model, cfg, reset_peak=True)
    layers = adapter.layers(model)
    geos = [adapter.geometry(layer) for layer in layers]
    if any(g.num_heads == 0 or g.intermediate == 0 for g in geos):
        raise NumpruneError(f"{meth.name} needs every layer's attention and MLP blocks (a fully pruned block is here)")
    model_info = {
        "name_or_path": str(getattr(model.config, "_name_or_path", "")) if hasattr(model, "config") else "",
        "adapter": adapter.name,
        "num_layers": len(geos),
        "fingerprint": model_fingerprint(model),
    }
    params_before = count_params(model)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    done = meth.transform_(model, adapter, calibration, cfg)
    seconds = time.perf_counter() - start
    model.train(was_training)
    achieved = {**done.achieved, "model_params_before": params_before, "model_params_after": count_params(model)}
    # the remaining layers' heads and channels (a sliced residual stream narrows the projections too: their
    # FLOPs are counted at the dense width, an upper bound)
    element = next(model.parameters()).element_size()
    achieved |= per_token_record(geos[:1] * len(done.layers), done.layers, element)  # every layer has one shape
    achieved |= {f"{k}_dense": v for k, v in per_token_costs(geos, element).items()}  # all dense layers
    return PruningPlan(
        layers=done.layers,
        dense_shapes=[g.shape for g in geos],
        method=cfg.method,
        ratio=cfg.ratio,
        options=options_of(cfg),
        achieved=achieved,
        calibration={"nsamples": calibration.shape[0], "seqlen": calibration.shape[1], **(calibration_info or {})},
        model=model_info,
        timing={"prune_seconds": seconds, **peak_memory(device)},
        versions=library_versions(),
        transform=done.transform,
    )
