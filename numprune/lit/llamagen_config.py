"""The declarative LlamaGen config (``runner: llamagen``): typed sections, ``--key=value`` overrides, the grid.

A config file lists only what differs from the defaults of the dataclasses below. Overrides on the command
line use dotted keys and YAML values: ``--ratios=[0.1]``, ``--methods=[dense,numerical]``,
``--calibration.images_per_class=2``, ``--metrics.reference=data/real``, ``--models=[{name: tiny, ...}]``.
Unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from numprune.errors import NumpruneError


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
    """Calibration rows from the model's own samples (``numprune.llamagen.calibration_tokens``).
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
    seed: int = 0  # batch j is seeded with seed + j (numprune.llamagen.generate_images)
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


@dataclass
class LlamaGenConfig:
    experiment: str
    results: str | None
    models: list[GPTSpec]
    tokenizer: VQSpec
    methods: list[str]
    ratios: list[float]
    calibration: CalibrationSpec
    generation: GenerationSpec
    metrics: MetricsSpec
    runner: str = "llamagen"
    image_size: int = 384
    eval_size: int | None = 256
    precision: str = "bf16"  # the GPT's weights; the VQ decoder stays fp32
    prune: dict[str, Any] = field(default_factory=dict)  # PruneConfig fields; a method's name: its own fields
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.Trainer arguments (accelerator, devices)
    save_models: bool = False  # save each pruned model (save_llamagen) next to the results
    dry_run: bool = False


SECTIONS = {
    "tokenizer": VQSpec,
    "calibration": CalibrationSpec,
    "generation": GenerationSpec,
    "metrics": MetricsSpec,
}
REQUIRED = ("experiment", "results", "models", "methods", "ratios")


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise NumpruneError(f"{where} must be a mapping, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise NumpruneError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as err:
        raise NumpruneError(f"{where}: {err}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--a.b=VALUE`` (VALUE parsed as YAML) set into a copy of ``raw``."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy
    for arg in overrides:
        key, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep or not key:
            raise NumpruneError(f"overrides are --key=value (dotted keys, YAML values), got {arg!r}")
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise NumpruneError(f"override {arg!r}: {name} is not a section")
        node[leaf] = yaml.safe_load(value)
    return out


def parse_config(raw: dict[str, Any], overrides: list[str]) -> LlamaGenConfig:
    data = apply_overrides(raw, overrides)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise NumpruneError(f"LlamaGen config lacks {missing}")
    if not data["models"]:
        raise NumpruneError("LlamaGen config lists no models")
    data["models"] = [_build(GPTSpec, m, f"models[{i}]") for i, m in enumerate(data["models"])]
    for name, cls in SECTIONS.items():
        data[name] = _build(cls, data.get(name) or {}, name)
    cfg = _build(LlamaGenConfig, data, "LlamaGen config")
    if cfg.precision not in ("fp32", "fp16", "bf16"):
        raise NumpruneError(f"precision must be fp32, fp16 or bf16, got {cfg.precision!r}")
    unknown = set(cfg.metrics.names) - {"fid", "sfid", "is", "precision", "recall"}
    if unknown:
        raise NumpruneError(f"metrics.names: unknown metrics {sorted(unknown)}")
    return cfg


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


def model_config(cfg: LlamaGenConfig, spec: GPTSpec):
    """The ``LlamaGenConfig`` of a grid entry (shapes, classes, tokens per image), without building weights."""
    from numprune.models.llamagen import llamagen_config

    return llamagen_config(spec.gpt_model, cfg.image_size, **spec.config)


@dataclass
class GenPoint:
    """One run of the grid: a model and a method at a ratio (ratio 0: the dense model)."""

    model: GPTSpec
    method: str
    ratio: float
    options: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.model.name} {self.method} {self.ratio:g}"


def method_options(cfg: LlamaGenConfig, method: str) -> dict[str, Any]:
    """Shared ``prune`` fields (non-mapping values) plus the method's own mapping (``prune.numerical``)."""
    shared = {k: v for k, v in cfg.prune.items() if not isinstance(v, dict)}
    own = cfg.prune.get(method) or {}
    if not isinstance(own, dict):
        raise NumpruneError(f"prune.{method} must be a mapping of PruneConfig fields")
    return {**shared, **own}


def points(cfg: LlamaGenConfig) -> list[GenPoint]:
    """Models x (dense once, then every method x ratio), in config order."""
    out = []
    for model in cfg.models:
        if "dense" in cfg.methods:
            out.append(GenPoint(model, "dense", 0.0, {}))
        for method in (m for m in cfg.methods if m != "dense"):
            for ratio in cfg.ratios:
                if ratio > 0:
                    out.append(GenPoint(model, method, float(ratio), method_options(cfg, method)))
    return out


def check_ready(cfg: LlamaGenConfig) -> list[str]:
    """What a real run lacks (methods not registered, files not there); empty when it can start."""
    from numprune.methods import METHODS

    problems = [f"method {m!r} is not registered (available: {sorted(METHODS)})" for m in cfg.methods]
    problems = [p for p, m in zip(problems, cfg.methods) if m != "dense" and m not in METHODS]
    files = [(f"models[{m.name}].checkpoint", m.checkpoint, m.random_init) for m in cfg.models]
    files += [("tokenizer.checkpoint", cfg.tokenizer.checkpoint, cfg.tokenizer.random_init)]
    files += [("metrics.reference", cfg.metrics.reference, False)]
    if cfg.metrics.inception_weights is not None:
        files.append(("metrics.inception_weights", cfg.metrics.inception_weights, False))
    for spec in cfg.models:
        try:
            num_classes = model_config(cfg, spec).num_classes
            class_ids(cfg.calibration.classes, num_classes, "calibration.classes")
            n = len(class_ids(cfg.generation.classes, num_classes, "generation.classes"))
        except (NumpruneError, KeyError, TypeError, ValueError) as err:
            problems.append(f"models[{spec.name}]: {err}")
            continue
        if cfg.generation.num_samples % n:
            problems.append(f"generation.num_samples {cfg.generation.num_samples} is not a multiple of {n} classes")
    for what, path, random_init in files:
        if random_init:
            continue
        if path is None:
            problems.append(f"{what} is null (give a path, or random_init: true for a test model)")
        elif not Path(path).exists():
            problems.append(f"{what} {path} does not exist")
    return problems
