"""Architecture adapters; ``get_adapter`` picks the one for a model or says which are supported.

Importing this package (or ``numprune.adapters.base``) needs only torch: the Hugging Face adapters, which
import transformers, are loaded when a model asks for one. A new Hugging Face family is one file here (a
subclass of ``hf_decoder.HFDecoderAdapter``) named in ``HF_FAMILIES``, its per-layer classes in
``numprune/pruned_model.py``, and its tests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from numprune.adapters.base import Adapter, LayerGeometry, per_token_record
from numprune.errors import NumpruneError

if TYPE_CHECKING:
    from torch import nn

    from numprune.adapters.hf_decoder import HFDecoderAdapter

__all__ = ["Adapter", "LayerGeometry", "get_adapter", "hf_adapters", "per_token_record", "supported_architectures"]

# module in numprune/adapters -> its adapter class
HF_FAMILIES = {
    "llama": "LlamaAdapter",
    "mistral": "MistralAdapter",
    "qwen2": "Qwen2Adapter",
    "qwen3": "Qwen3Adapter",
    "gemma3": "Gemma3Adapter",
}


def hf_adapters() -> list[HFDecoderAdapter]:
    """One instance of every Hugging Face family's adapter (imports transformers)."""
    return [getattr(importlib.import_module(f"numprune.adapters.{m}"), c)() for m, c in HF_FAMILIES.items()]


def supported_architectures() -> list[str]:
    """Family names (as in the error message) and the model_type each one prunes."""
    return [f"{a.name} ({a.model_type})" if a.name != a.model_type else a.name for a in hf_adapters()] + ["llamagen"]


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``; a clear error naming the supported families otherwise."""
    custom = getattr(model, "numprune_adapter", None)
    if custom is not None:  # models we implement ourselves (LlamaGen) carry their adapter
        return custom
    config = getattr(model, "config", None)
    if config is not None:
        for adapter in hf_adapters():
            if adapter.matches(model):
                return adapter
    kind = getattr(config, "model_type", type(model).__name__)
    hint = " (a vision-language checkpoint: load its text model, e.g. Gemma3ForCausalLM)" if _multimodal(config) else ""
    raise NumpruneError(
        f"unsupported architecture {kind!r}{hint}: numprune prunes the decoder families "
        f"{', '.join(supported_architectures())}"
    )


def _multimodal(config: object) -> bool:
    return config is not None and any(hasattr(config, k) for k in ("vision_config", "text_config"))
