"""Official LlamaGen checkpoints in, pruned LlamaGen models out (per-layer config JSON + safetensors)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from numprune.llamagen.config import GPTConfig, gpt_config
from numprune.llamagen.gpt import LlamaGen
from numprune.llamagen.state_dict import load_checked_, read_state_dict
from numprune.plan import PruningPlan
from numprune.save import PLAN_FILE, atomic_directory

# Keys an official checkpoint may hold that are not model state: the RoPE table (older checkpoints) and KV
# caches (saved after setup_caches()).
GPT_IGNORED_KEYS = (r"freqs_cis", r"layers\.\d+\.attention\.kv_cache\.[kv]_cache")
CONFIG_FILE = "llamagen_config.json"
WEIGHTS_FILE = "model.safetensors"


def load_official_gpt(
    source: str | Path | Mapping[str, Tensor],
    name: str = "GPT-XXL",
    image_size: int = 384,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    trusted: bool = False,
    **overrides,
) -> LlamaGen:
    """Build ``name`` (``GPT-B`` ... ``GPT-3B``, or any config via ``overrides``) and load an official c2i
    checkpoint (bare FSDP state dict or ``{"model": ...}``), refusing missing or unexpected keys."""
    cfg = gpt_config(name, image_size=image_size, **overrides)
    model = load_gpt_state(cfg, read_state_dict(source, trusted=trusted), device=device, dtype=dtype)
    model.config._name_or_path = str(source) if isinstance(source, (str, Path)) else name  # for the plan / rows
    return model


def load_gpt_state(
    cfg: GPTConfig,
    state_dict: Mapping[str, Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> LlamaGen:
    with torch.device("meta"):
        model = LlamaGen(cfg)
    load_checked_(model, state_dict, GPT_IGNORED_KEYS, dtype=dtype)
    model.freqs_cis = _rope_of(cfg)  # built on the meta device above
    return model.to(device).eval()


def _rope_of(cfg: GPTConfig) -> Tensor:
    from numprune.llamagen.rope import rope_2d_table

    return rope_2d_table(cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num)


def official_state_dict(model: LlamaGen) -> dict[str, Tensor]:
    """The model's weights under the official key names (no caches, no RoPE table)."""
    return {k: v for k, v in model.state_dict().items() if "kv_cache" not in k}


def save_llamagen(model: LlamaGen, out: str | Path, plan: PruningPlan | None = None, overwrite: bool = False) -> Path:
    """Write ``llamagen_config.json`` (per-layer heads / MLP widths), ``model.safetensors`` and the plan;
    the folder is built next to ``out`` and renamed into place."""
    from safetensors.torch import save_file

    with atomic_directory(out, overwrite) as tmp:
        cfg = {"architecture": "llamagen-c2i", **dataclasses.asdict(model.config)}
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1) + "\n")
        tensors = {k: v.detach().contiguous().cpu() for k, v in official_state_dict(model).items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if plan is not None:
            plan.save(tmp / PLAN_FILE)
    return Path(out)


def load_llamagen(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LlamaGen:
    """Reload a model written by ``save_llamagen`` (dense or pruned), with the strict key check."""
    path = Path(path)
    fields = json.loads((path / CONFIG_FILE).read_text())
    fields.pop("architecture", None)
    cfg = GPTConfig(**fields)
    return load_gpt_state(cfg, read_state_dict(path / WEIGHTS_FILE), device=device, dtype=dtype)
