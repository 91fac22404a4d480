"""``numprune run`` for the declarative LlamaGen config (``runner: llamagen``): validation and the point list.

There is no LlamaGen LightningModule yet; the config names the plain functions of docs/llamagen.md. A dry run
checks the sections and that those functions import, then lists the points like the text configs do.
"""

from __future__ import annotations

from itertools import product
from typing import Any

from numprune.errors import NumpruneError
from numprune.lit.experiment import resolve_function

REQUIRED = ("experiment", "results", "models", "tokenizer", "methods", "ratios", "calibration", "generation", "metrics")
FUNCTIONS = (
    "numprune.models.llamagen_io.load_official_gpt",
    "numprune.llamagen.calibration_tokens",
    "numprune.prune.prune_",
    "numprune.llamagen.generate_images",
    "numprune.eval.image_metrics.compute_metrics",
)


def run_llamagen(cfg: dict[str, Any], overrides: list[str]) -> list[dict[str, Any]]:
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise NumpruneError(f"LlamaGen config lacks {missing}")
    for model in cfg["models"]:
        for key in ("name", "gpt_model", "checkpoint", "cfg_scale"):
            if key not in model:
                raise NumpruneError(f"LlamaGen model entry {model.get('name', model)} lacks {key!r}")
    for path in FUNCTIONS:
        resolve_function(path)
    points = [("dense", 0.0)] if "dense" in cfg["methods"] else []
    points += [(m, r) for m, r in product([m for m in cfg["methods"] if m != "dense"], cfg["ratios"])]
    for model in cfg["models"]:
        for method, ratio in points:
            print(f"todo  {model['name']} {method} {ratio} (cfg {model['cfg_scale']})")
    print(f"{len(points) * len(cfg['models'])} points, experiment {cfg['experiment']}, results {cfg['results']}")
    if "--dry_run=true" not in overrides:
        raise NumpruneError(
            "the LlamaGen runner has no Lightning module yet: run the steps of docs/llamagen.md "
            "(this config lists their settings); --dry_run=true validates the config"
        )
    return []
