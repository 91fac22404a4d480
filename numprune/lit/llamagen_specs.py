"""What a LlamaGen run loads and how it samples: the typed sections of a LlamaGen config.

They are the init arguments of ``numprune.lit.LlamaGenModule``, so a config lists them under
``model.init_args`` and LightningCLI checks every key (``--model.calibration.images_per_class=2`` overrides one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from numprune.errors import NumpruneError

SAMPLING_KEYS = ("cfg_scale", "temperature", "top_k", "top_p")
METRIC_NAMES = ("fid", "sfid", "is", "precision", "recall")


@dataclass
class GPTSpec:
    """One model of the grid. ``checkpoint: null`` + ``random_init: true`` builds a random model (tests);
    ``config`` overrides ``LlamaGenConfig`` fields (e.g. a tiny ``dim``/``n_layer``/``block_size``)."""

    name: str
    gpt_model: str = "GPT-XXL"
    checkpoint: str | None = None
    cfg_scale: float = 1.75
    random_init: bool = False
    seed: int = 0  # random_init only
    config: dict[str, Any] = field(default_factory=dict)
    dense_reference: dict[str, float] | None = None  # the paper's numbers, for reading the results only


@dataclass
class VQSpec:
    """The image tokenizer (VQ-16). ``random_init`` + ``config`` (``VQConfig`` fields) for tests."""

    checkpoint: str | None = None
    random_init: bool = False
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class CalibrationSpec:
    """Calibration rows from the model's own samples (``numprune.llamagen.sampling.calibration_tokens``).
    ``classes``: ``all`` or a list of class ids; ``sampling.cfg_scale: model`` uses the model's scale."""

    source: str = "self-generated"
    classes: str | list[int] = "all"
    images_per_class: int = 128  # the paper's setting; recorded in every row (calib_dataset)
    sampling: dict[str, Any] = field(default_factory=dict)  # cfg_scale, temperature, top_k, top_p
    batch_size: int = 64
    seed: int = 1  # not the evaluation seed: calibration images differ from the evaluated ones


@dataclass
class GenerationSpec:
    """Evaluation samples: ``num_samples`` images over ``classes`` (``balanced``: all classes, equal counts)."""

    num_samples: int = 50000
    classes: str | list[int] = "balanced"
    batch_size: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_interval: int = -1
    seed: int = 0  # batch j is seeded with seed + j (numprune.llamagen.sampling.generate_images)
    save_png: bool = False
    save_npz: bool = False


@dataclass
class MetricsSpec:
    """ADM-protocol metrics (``numprune.eval.image_metrics``) against ``reference``: a folder of images, an
    ``.npz`` (``arr_0``) or ADM's reference batch; ``inception_weights: null`` downloads torch-fidelity's."""

    names: list[str] = field(default_factory=lambda: ["fid", "sfid", "is", "precision", "recall"])
    reference: str = "data/adm/VIRTUAL_imagenet256_labeled.npz"
    inception_weights: str | None = None
    isc_splits: int = 10
    prc_neighborhood: int = 3
    batch_size: int = 64


def class_ids(spec: str | list[int], num_classes: int, what: str) -> list[int]:
    """``all`` / ``balanced``: every class; else the listed class ids (checked against the model)."""
    if isinstance(spec, str):
        if spec not in ("all", "balanced"):
            raise NumpruneError(f"{what}: 'all' / 'balanced' or a list of class ids, got {spec!r}")
        return list(range(num_classes))
    ids = [int(c) for c in spec]
    if not ids or not all(0 <= c < num_classes for c in ids):
        raise NumpruneError(f"{what}: class ids must be in [0, {num_classes}), got {spec!r}")
    return ids


def gpt_config_of(spec: GPTSpec, image_size: int):
    """The ``GPTConfig`` of a spec (shapes, classes, tokens per image), without building weights."""
    from numprune.llamagen.config import gpt_config

    return gpt_config(spec.gpt_model, image_size, **spec.config)


def load_gpt(spec: GPTSpec, image_size: int, dtype: torch.dtype):
    """The GPT of a grid entry: an official checkpoint, or random weights (``random_init``, tests)."""
    from numprune.llamagen.checkpoint import load_official_gpt
    from numprune.llamagen.config import gpt_config
    from numprune.llamagen.gpt import build_gpt

    if spec.checkpoint is not None and not spec.random_init:
        return load_official_gpt(spec.checkpoint, spec.gpt_model, image_size, dtype=dtype, **spec.config)
    model = build_gpt(gpt_config(spec.gpt_model, image_size, **spec.config), dtype=dtype, seed=spec.seed)
    model.config._name_or_path = f"random:{spec.name}"
    return model.eval()


def load_vq(spec: VQSpec):
    from numprune.llamagen.vq import VQConfig, VQModel, load_official_vq

    cfg = VQConfig(**spec.config)
    if spec.checkpoint is not None and not spec.random_init:
        return load_official_vq(spec.checkpoint, cfg)
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        return VQModel(cfg).eval()
