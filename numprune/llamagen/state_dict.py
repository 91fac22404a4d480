"""Loading official checkpoints with an explicit key check (the official loaders use ``strict=False``)."""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from numprune.errors import NumpruneError

WRAPPER_KEYS = ("model", "module", "state_dict")


def read_state_dict(source: str | Path | Mapping[str, Tensor], trusted: bool = False) -> dict[str, Tensor]:
    """A bare state dict from a file (``.pt``/``.pth`` pickle or ``.safetensors``) or a mapping.

    FSDP checkpoints (LlamaGen XXL/3B) are the bare state dict; DDP ones keep it under ``"model"``
    (DeepSpeed: ``"module"``; some tools: ``"state_dict"``). Pickles load with ``weights_only=True`` unless
    ``trusted`` (only for files whose origin you trust).
    """
    loaded: Mapping[str, Any]
    if isinstance(source, Mapping):
        loaded = source
    else:
        path = Path(source)
        if not path.exists():
            raise NumpruneError(f"checkpoint {path} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path))
        else:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=not trusted, mmap=True)
            except pickle.UnpicklingError as err:
                raise NumpruneError(
                    f"{path} holds objects that weights_only loading refuses ({err}); if you trust the file, "
                    "pass trusted=True"
                ) from err
    sd = dict(loaded)
    for key in WRAPPER_KEYS:
        if key in sd and isinstance(sd[key], Mapping):
            return dict(sd[key])
    return sd


def check_keys(model: nn.Module, state_dict: Mapping[str, Tensor], ignore: Iterable[str] = ()) -> dict[str, Tensor]:
    """The state dict without the ignored extras; raises if keys are missing, unexpected or mis-shaped.

    ``ignore``: regular expressions of keys that may appear in a checkpoint but are not model state
    (e.g. ``freqs_cis``, KV caches).
    """
    patterns = [re.compile(p) for p in ignore]
    sd = {k: v for k, v in state_dict.items() if not any(p.fullmatch(k) for p in patterns)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{title} ({len(items)}): {', '.join(items[:8])}{more}")
        raise NumpruneError(f"checkpoint does not match {type(model).__name__}: " + "; ".join(parts))
    return sd


def load_checked_(
    model: nn.Module, state_dict: Mapping[str, Tensor], ignore: Iterable[str] = (), dtype: torch.dtype | None = None
) -> nn.Module:
    """Check the keys, then load with ``assign=True`` (works for models built on the meta device)."""
    sd = check_keys(model, state_dict, ignore)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model
