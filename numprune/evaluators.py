"""Evaluations beyond a module's own validation (zero-shot, MMLU, speed), named in a config's ``evaluate``."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from numprune.errors import NumpruneError

# keys of an evaluator's result that are the row itself, not details of how it was made
_ROW_KEYS = {"task", "name", "metric", "value", "source", "metrics", "stderr", "n_samples"}


@dataclass
class Evaluator:
    """``function(model, [tokenizer,] **args)`` by dotted path. Its result (a list of dataclasses / dicts, or
    one) becomes rows with ``eval_dataset = NAME:TASK``."""

    name: str
    function: str
    args: dict[str, Any] = field(default_factory=dict)

    def resolve(self):
        """The function; a clear error when it is not importable in this checkout."""
        module, _, attr = self.function.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise NumpruneError(f"evaluator {self.function} is not available ({err})") from None

    def status(self) -> str:
        try:
            self.resolve()
            return "available"
        except NumpruneError as err:
            return f"NOT AVAILABLE: {err}"


def evaluator_rows(ev: Evaluator, model, tokenizer) -> list[dict[str, Any]]:
    """Call an evaluator and turn its result into ``eval_dataset`` / ``metric`` / ``value`` row parts; how each
    number was made (shots, task version, documents) goes to ``details`` (merged into the row's options)."""
    fn = ev.resolve()
    kwargs = dict(ev.args)
    if "tokenizer" in inspect.signature(fn).parameters:
        kwargs["tokenizer"] = tokenizer
    out = fn(model, **kwargs)
    rows = []
    for item in out if isinstance(out, (list, tuple)) else [out]:
        d = dataclasses.asdict(item) if dataclasses.is_dataclass(item) and not isinstance(item, type) else dict(item)
        if "value" in d:
            task = d.get("task") or d.get("name") or ev.name
            details = {k: v for k, v in d.items() if k not in _ROW_KEYS and isinstance(v, (int, float, str))}
            rows.append(
                {
                    "eval_dataset": f"{ev.name}:{task}",
                    "metric": d.get("metric", "value"),
                    "value": d["value"],
                    "eval_source": d.get("source", ""),
                    "eval_windows": d.get("n_samples", ""),  # documents scored
                    "details": details,
                }
            )
            continue
        for key, value in d.items():  # a record of measurements (e.g. speed): one row per number
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"eval_dataset": f"{ev.name}:{ev.name}", "metric": key, "value": value})
    return rows
