"""Architecture adapters; ``get_adapter`` picks the one for a model or says which are supported.

Importing this package (or ``numprune.adapters.base``) needs only torch: the Hugging Face adapter, which
imports transformers, is loaded when a model asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from numprune.adapters.base import Adapter, LayerGeometry
from numprune.errors import NumpruneError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Adapter", "LayerGeometry", "get_adapter", "supported_architectures"]


def supported_architectures() -> list[str]:
    from numprune.adapters.hf_llama import SUPPORTED_MODEL_TYPES

    return [*SUPPORTED_MODEL_TYPES, "llamagen"]


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``; a clear error naming the supported architectures otherwise."""
    custom = getattr(model, "numprune_adapter", None)
    if custom is not None:  # models we implement ourselves (LlamaGen) carry their adapter
        return custom
    config = getattr(model, "config", None)
    if config is not None:
        from numprune.adapters.hf_llama import SUPPORTED_MODEL_TYPES, HFLlamaAdapter, base_model_type

        if base_model_type(model) in SUPPORTED_MODEL_TYPES:
            layers = getattr(getattr(model, "model", None), "layers", None)
            if layers is not None and len(layers) and all(hasattr(layers[0], a) for a in ("self_attn", "mlp")):
                return HFLlamaAdapter()
    kind = getattr(config, "model_type", type(model).__name__)
    raise NumpruneError(
        f"unsupported architecture {kind!r}: numprune prunes models with o_proj/down_proj in the LLaMA layout "
        f"({', '.join(supported_architectures())})"
    )
