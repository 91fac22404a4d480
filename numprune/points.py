"""Grid points: one run each (a method at a ratio on a model and data given by LightningCLI arguments).

``numprune run CONFIG.yaml`` expands a config's ``grid`` (``expand``); the experiment scripts build points with
``text_point``. ``numprune.runner`` runs them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Point:
    """One run of an experiment grid."""

    experiment: str
    method: str = "dense"  # a registered method, or "dense" (ratio 0)
    ratio: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # PruneConfig fields as given (rows record all)
    label: str | None = None  # the CSV's method column (default: the method)
    args: tuple[str, ...] = ()  # LightningCLI arguments that build the model and the data
    # Reuse one dense calibration pass across the points of a process (same model and calibration): the pruned
    # model is identical; the time row is then ``prune_seconds_excl_dense_pass`` and no memory row is written.
    share_dense_stats: bool = False

    @property
    def name(self) -> str:
        return self.label or self.method

    def describe(self) -> str:
        """``LABEL ratio=R`` and what selects this point's model and calibration size."""
        parts = [f"{self.name} ratio={self.ratio:g}"]
        for arg in self.args:
            key, _, value = arg.partition("=")
            if key in ("--model.model", "--data.nsamples"):
                name = json.loads(value).get("name", value) if value.startswith("{") else value
                parts.append(f"{key.removeprefix('--').split('.')[-1]}={name}")
        return " ".join(parts)


def text_point(
    experiment: str,
    model: str = "smollm2",
    method: str = "numerical",
    ratio: float = 0.2,
    options: dict[str, Any] | None = None,
    calib: str = "wikitext2:validation",
    nsamples: int = 32,
    seqlen: int = 256,
    seed: int = 0,
    evals: Sequence[str] = ("wikitext2",),
    eval_seqlen: int = 256,
    max_windows: int | None = 16,
    label: str | None = None,
    share_stats: bool = False,
    data_dir: str | None = None,
    dtype: str = "fp32",
) -> Point:
    """A point of the SmolLM2 experiment scripts' protocol (32 x 256 calibration windows of WikiText-2
    validation, the first 16 non-overlapping 256-token windows of each evaluation set, fp32 on the CPU)."""
    args = [
        f"--model.model={model}",
        f"--model.dtype={dtype}",
        f"--data.calib={calib}",
        f"--data.nsamples={nsamples}",
        f"--data.seqlen={seqlen}",
        f"--data.seed={seed}",
        f"--data.evals={json.dumps(list(evals))}",
        f"--data.eval_seqlen={eval_seqlen}",
        f"--data.max_windows={'null' if max_windows is None else max_windows}",
        "--trainer.accelerator=cpu",
    ]
    if data_dir:
        args.append(f"--data.data_dir={data_dir}")
    dense = ratio == 0
    return Point(
        experiment,
        method="dense" if dense else method,
        ratio=float(ratio),
        options={} if dense else dict(options or {}),
        label="dense" if dense else label,
        args=tuple(args),
        share_dense_stats=share_stats and not dense,
    )


def expand(experiment: str, grid: Grid, base: dict[str, Any], args: Sequence[str]) -> list[Point]:
    """Every point of a grid, in order, without duplicates (one dense point per model and calibration size).

    ``base``: the config's single values (``model``: ``model.model``; ``nsamples``: ``data.nsamples`` or None
    without a text datamodule; ``method``, ``ratio``, ``label``, ``prune``).
    """
    points: list[Point] = []
    for m in grid.models or [base["model"]]:
        model_arg = [f"--model.model={m if isinstance(m, str) else json.dumps(m)}"] if grid.models else []
        for n in grid.nsamples or [base["nsamples"]]:
            for label in grid.methods or [base["method"]]:
                variant = dict(grid.variants.get(label, {"method": label}))
                method = variant.pop("method", label)
                n_here = variant.pop("nsamples", n)
                for r in grid.ratios or [base["ratio"]]:
                    dense = r == 0
                    size = [] if (n if dense else n_here) is None else [f"--data.nsamples={n if dense else n_here}"]
                    p = Point(
                        experiment,
                        method="dense" if dense else method,
                        ratio=float(r),
                        options={} if dense else {**base["prune"], **variant},
                        label="dense" if dense else (base["label"] if not grid.methods and base["label"] else label),
                        args=(*args, *model_arg, *size),
                        share_dense_stats=grid.share_dense_stats and not dense,
                    )
                    if p not in points:
                        points.append(p)
    return points


@dataclass
class Grid:
    """What a config varies. Empty lists mean the config's single value (``model.model``, ``data.nsamples``,
    ``method``, ``ratio``). ``methods`` names methods or keys of ``variants``; a variant is ``{method: NAME,
    nsamples: N (optional: pins the calibration size), **PruneConfig fields}``. A model entry is the value of
    ``model.model`` (a name for text models, a spec mapping for LlamaGen). ``share_dense_stats``: one dense
    calibration pass per process for all points of a model (identical plans; time rows exclude the pass)."""

    models: list[Any] = field(default_factory=list)
    nsamples: list[int] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    share_dense_stats: bool = False
