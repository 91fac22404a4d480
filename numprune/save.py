"""Save a pruned model so that it reloads with stock transformers (remote code) and with ``load_pruned``.

The folder is written next to its destination and renamed into place at the end, so an interrupted run
never leaves a half-written model directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from numprune import pruned_model, sliced_model
from numprune.errors import NumpruneError
from numprune.plan import PruningPlan
from numprune.timing import stage

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

PLAN_FILE = "pruning_plan.json"
MODELING_FILE = "modeling_numprune.py"
# the module named in a saved config's auto_map -> the self-contained file copied under that name
MODELING_SOURCES = {"modeling_numprune": pruned_model.__file__, "modeling_numprune_sliced": sliced_model.__file__}


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise NumpruneError(f"output directory {out} exists; pass --overwrite to replace it")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temporary folders that earlier saves to ``out`` left behind when they were killed (SIGKILL
    leaves no chance to clean up): ``.NAME.tmp-PID-*`` of processes that no longer run."""
    removed = []
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.removeprefix(f".{out.name}.tmp-").split("-")[0]
        if tmp.is_dir() and (not pid.isdigit() or not _alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on any failure it vanishes (and
    a folder left by a killed earlier save is removed by the next one)."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_pruned(
    model: PreTrainedModel, out: str | Path, plan: PruningPlan | None = None, tokenizer=None, overwrite: bool = False
) -> Path:
    """Write safetensors weights, ``config.json`` (per-layer shapes), the modeling file and the plan."""
    with stage("save"), atomic_directory(out, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for module in {ref.split(".")[0] for ref in (getattr(model.config, "auto_map", None) or {}).values()}:
            if module not in MODELING_SOURCES:
                raise NumpruneError(f"the model's config names remote code {module!r} that numprune does not write")
            shutil.copyfile(MODELING_SOURCES[module], tmp / f"{module}.py")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            plan.save(tmp / PLAN_FILE)
    return Path(out)


def load_pruned(path: str | Path, dtype=None, **kwargs) -> nn.Module:
    """Load a model saved by numprune (heads/channels pruned, sliced, or blocks removed) or any dense model,
    without remote code; the same logits as ``from_pretrained(path, trust_remote_code=True)``."""
    return pruned_model.load_pruned(path, dtype=dtype, **kwargs)  # sliced types are registered by the import


def load_plan(path: str | Path) -> PruningPlan | None:
    f = Path(path) / PLAN_FILE
    return PruningPlan.load(f) if f.exists() else None
