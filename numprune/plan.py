"""``PruningPlan``: what was kept in every layer and exactly how the plan was produced (JSON round trip)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LayerPlan:
    """Kept query heads, KV heads and MLP channels of one decoder layer (indices into the dense layer)."""

    heads: list[int]
    kv_heads: list[int]
    channels: list[int]


@dataclass
class PruningPlan:
    layers: list[LayerPlan]
    dense_shapes: list[dict[str, int]]  # per layer: hidden, num_heads, num_kv_heads, head_dim, intermediate
    method: str
    ratio: float
    options: dict[str, Any]  # every PruneConfig field
    achieved: dict[str, Any]  # params/units ratio of attention+MLP, whole-model params before/after, ...
    calibration: dict[str, Any] = field(default_factory=dict)  # dataset, source, nsamples, seqlen, seed
    model: dict[str, Any] = field(default_factory=dict)  # name_or_path, model_type, fingerprint
    timing: dict[str, float] = field(default_factory=dict)  # seconds, peak memory
    versions: dict[str, str] = field(default_factory=dict)
    # methods that rewrite the model (scoring "transform"): kind ("depth", "slicegpt") and what was removed or
    # sliced (removed_layers; residual_dims); empty for head/channel plans
    transform: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def summary(self) -> str:
        a = self.achieved
        t = self.transform
        tail = f"model params {a['model_params_before']:,} -> {a['model_params_after']:,}"
        if t.get("kind") == "depth":
            return (
                f"{self.method} ratio {self.ratio:.2f}: removed {len(t['removed_layers'])}/{t['dense_layers']} "
                f"decoder blocks {t['removed_layers']}, {a['params_ratio']:.4f} of attention+MLP params; {tail}"
            )
        if t.get("kind") == "slicegpt":
            return (
                f"{self.method} ratio {self.ratio:.2f}: residual stream {t['hidden']} -> {t['dim']} "
                f"({1 - t['dim'] / t['hidden']:.1%} sliced), removed {a['params_ratio']:.4f} of attention+MLP "
                f"params (shortcut matrices counted); {tail}"
            )
        return (
            f"{self.method} ratio {self.ratio:.2f} ({self.options.get('ratio_of', 'params')}): "
            f"removed {a['params_ratio']:.4f} of attention+MLP params, "
            f"{a['attn_units_pruned']}/{a['attn_units_total']} attention units, "
            f"{a['channels_pruned']}/{a['channels_total']} MLP channels; "
            f"model params {a['model_params_before']:,} -> {a['model_params_after']:,}{self.notes()}"
        )

    def notes(self) -> str:
        """What the ratio does not show: the embedding share of the model (the ratio counts attention+MLP only;
        the embedding dominates small models of large vocabularies) and a GQA mode other than the one asked."""
        a, out = self.achieved, ""
        if a.get("embedding_params"):
            out += f" (embeddings {a['embedding_params'] / a['model_params_before']:.1%} of them, not pruned)"
        if a.get("gqa_effective", self.options.get("gqa")) != self.options.get("gqa"):
            out += f"; gqa={self.options.get('gqa')} acted as {a['gqa_effective']} (one KV head per layer)"
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        data = dict(data)
        data["layers"] = [LayerPlan(**layer) for layer in data["layers"]]
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))
