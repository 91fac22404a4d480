"""One long-format CSV schema for every experiment; atomic writes; resumable grids.

Every row says exactly how it was produced: model and checkpoint hash, method, ratio asked and achieved,
seed, calibration set/size/length, evaluation set/length, metric, value, parameter counts, options,
library versions, git commit and time.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import functools
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

COLUMNS = [
    "experiment",
    "model",
    "model_hash",
    "method",
    "ratio",
    "ratio_of",
    "ratio_achieved",
    "seed",
    "calib_dataset",
    "calib_source",
    "calib_nsamples",
    "calib_seqlen",
    "eval_dataset",
    "eval_source",
    "eval_seqlen",
    "eval_windows",
    "bos",  # the windows start with the tokenizer's BOS token (numprune.data.bos_token: the model's policy)
    "metric",
    "value",
    "params_before",
    "params_after",
    "heads_pruned",
    "kv_heads_pruned",
    "channels_pruned",
    "kv_bytes_per_token",  # KV-cache bytes per token of the model as evaluated (dense rows: the dense model)
    "attn_flops_per_token",  # attention FLOPs per decoded token at 2048 cached tokens (adapters.base)
    "options",
    "versions",
    "git_commit",
    "time",
]

# Columns that identify a row: a rerun of a grid skips rows whose key is already in the file.
KEY_COLUMNS = [
    "experiment",
    "model",
    "method",
    "ratio",
    "seed",
    "calib_dataset",
    "calib_nsamples",
    "calib_seqlen",
    "eval_dataset",
    "eval_seqlen",
    "metric",
    "options",
]


CODE_PATHS = (":/numprune", ":/experiments", ":/pyproject.toml")  # what "+dirty" looks at (not results, docs)


@functools.cache
def git_commit(cwd: str | Path | None = None) -> str:
    """The short commit of the code, ``+dirty`` when the code (not results or docs) differs from it. Cached: the
    first call of a process records the code it imported (call it when a long run starts)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def file_hash(path: str | Path, limit_files: int = 64) -> str:
    """Short sha256 over the weight files of a model folder (or one file); '' when not a local path."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors"))[:limit_files] if p.is_dir() else [p] if p.is_file() else []
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def portable(path: str | Path) -> str:
    """A path as a result row may show it: relative to the working directory, the data directory or home
    (``~/...``) when under one of them, else only its name; never an absolute path of this machine."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        return str(path)
    data = os.environ.get("NUMPRUNE_DATA_DIR")
    for base, prefix in ((Path.cwd(), ""), (Path(data) if data else None, "data:"), (Path.home(), "~/")):
        if base is not None and p.is_relative_to(base.resolve()):
            return prefix + str(p.relative_to(base.resolve()))
    return p.name


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return ""
    return str(value)


def normalise(row: dict[str, Any]) -> dict[str, str]:
    """A row with every schema column as a string (unknown keys are an error: the schema is the contract)."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"columns not in the results schema: {sorted(unknown)}")
    out = {c: _cell(row.get(c)) for c in COLUMNS}
    out["time"] = out["time"] or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return out


def read_rows(path: str | Path) -> list[dict[str, str]]:
    p = Path(path)
    if not p.exists():
        return []
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(_cell(row.get(c)) for c in KEY_COLUMNS)


def has_row(path: str | Path, row: dict[str, Any]) -> bool:
    """Whether a row with the same key is already recorded (for resuming a grid)."""
    key = row_key(row)
    return any(row_key(r) == key for r in read_rows(path))


def append_rows(path: str | Path, rows: Iterable[dict[str, Any]], replace: bool = False) -> None:
    """Append rows atomically: the file is rewritten to a temporary file and renamed over the old one, under an
    exclusive lock, so that several processes of one grid can share a CSV without losing rows. ``replace``:
    older rows with the key of a new row (``row_key``) are dropped (a re-measurement replaces its rows)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new_rows = [normalise(r) for r in rows]
    with open(p.parent / f".{p.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = read_rows(p)
        if replace:
            keys = {row_key(r) for r in new_rows}
            old = [r for r in old if row_key(r) not in keys]
        all_rows = old + new_rows
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
                writer.writeheader()
                for r in all_rows:
                    writer.writerow({c: r.get(c, "") for c in COLUMNS})
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def has_rows(results: str | Path | None, base: dict[str, Any], planned: list[dict], evaluators: Sequence[str]) -> bool:
    """Whether every planned row of a run (``base`` key columns + each planned ``eval_dataset`` / ``eval_seqlen``
    / ``metric``) is in the CSV, and at least one row of each named evaluator: a resumed grid skips the run."""
    if not results or not Path(results).exists() or not (planned or evaluators):
        return False
    rows = read_rows(results)
    keys = {row_key(r) for r in rows}
    if any(row_key({**base, **row}) not in keys for row in planned):
        return False
    same = [r for r in rows if all(r.get(k, "") == _cell(v) for k, v in base.items() if k not in ("ratio", "options"))]
    same = [r for r in same if float(r["ratio"] or 0) == float(base["ratio"])]
    return all(any(r["eval_dataset"].startswith(f"{name}:") for r in same) for name in evaluators)


def run_rows(
    base: dict[str, Any],
    common: dict[str, Any],
    measured: list[dict[str, Any]],
    extra: list[dict[str, Any]],
    timing: dict[str, float],
) -> list[dict[str, Any]]:
    """The rows of one finished run: one per measurement, one per evaluator result (how it was made, its
    ``details``, merged into the options), one per pruning cost in ``timing`` (seconds, peak memory)."""
    row = {**base, **common}
    rows = [{**row, **m} for m in measured]
    opts = json.loads(base["options"]) if isinstance(base["options"], str) else dict(base["options"])
    for r in extra:
        details = r.get("details", {})
        rows.append({**row, **{k: v for k, v in r.items() if k != "details"}, "options": {**opts, **details}})
    rows += [{**row, "metric": metric, "value": value} for metric, value in timing.items()]
    return rows


def plan_columns(plan: Any) -> dict[str, Any]:
    """The columns a ``PruningPlan`` fixes in every row of the model it pruned: how it was pruned (method,
    ratio, every effective option, calibration) and what it achieved. The one plan -> row mapping."""
    a, c = plan.achieved, plan.calibration
    return {
        "method": plan.method,
        "ratio": plan.ratio,
        "ratio_of": plan.options.get("ratio_of", "params"),
        "seed": plan.options.get("seed", 0),
        "calib_dataset": c.get("dataset", ""),
        "calib_source": c.get("source", ""),
        "calib_nsamples": c.get("nsamples", ""),
        "calib_seqlen": c.get("seqlen", ""),
        "ratio_achieved": round(a["params_ratio"], 6),
        "params_before": a["model_params_before"],
        "params_after": a["model_params_after"],
        "heads_pruned": a.get("heads_pruned", ""),
        "kv_heads_pruned": a.get("kv_heads_pruned", ""),
        "channels_pruned": a.get("channels_pruned", ""),
        "kv_bytes_per_token": a.get("kv_bytes_per_token", ""),
        "attn_flops_per_token": a.get("attn_flops_per_token", ""),
        "options": plan.options,
        "versions": plan.versions,
    }
