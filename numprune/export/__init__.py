"""Export a numprune model to formats other runtimes read (GGUF for llama.cpp: ``export_gguf``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["export_gguf"]

if TYPE_CHECKING:
    from numprune.export.gguf import export_gguf


def __getattr__(name: str) -> Any:
    if name == "export_gguf":  # imported on use: it loads the gguf package and transformers
        from numprune.export.gguf import export_gguf

        return export_gguf
    raise AttributeError(f"module 'numprune.export' has no attribute {name!r}")
