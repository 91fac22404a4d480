"""lm-eval task configs for the paper's zero-shot suite, from the hub or from local files (offline).

We never copy lm-eval's prompts: every config is lm-eval's own registered YAML (same prompt, same metric,
same task version), and for offline runs only the data source is swapped for local JSON lines files.

Local layout (``--data-dir DIR``), one file per split the task uses, rows in the hub dataset's format:

    DIR/boolq/validation.jsonl        passage, question, label (0/1)
    DIR/piqa/validation.jsonl         goal, sol1, sol2, label
    DIR/hellaswag/validation.jsonl    activity_label, ctx_a, ctx_b, endings, label
    DIR/winogrande/validation.jsonl   sentence (with "_"), option1, option2, answer ("1"/"2")
    DIR/arc_easy/test.jsonl           question, choices {text, label}, answerKey      (arc_challenge alike)
    DIR/openbookqa/test.jsonl         question_stem, choices {text, label}, answerKey
    DIR/mmlu/test.jsonl, dev.jsonl    question, subject, choices, answer (int)   (cais/mmlu "all" format)
    DIR/gsm8k/test.jsonl, train.jsonl question, answer ("... #### 42")

Splits a task names but whose file is missing are switched off (e.g. no ``train``: few-shot examples come
from lm-eval's fallback split). A task folder that is missing falls back to the hub task.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numprune.errors import NumpruneError

SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark: the lm-eval task, the metric the paper reports and the default shot count."""

    name: str  # lm-eval task (or group) name
    metric: str  # LLM-Pruner convention: acc or acc_norm; exact_match for GSM8K
    num_fewshot: int = 0
    filter: str = "none"  # lm-eval filter whose metric is reported (GSM8K: strict-match)
    in_average: bool = True  # part of the paper's 7-task average (Table 2/9)


TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        TaskSpec("boolq", "acc"),
        TaskSpec("piqa", "acc"),
        TaskSpec("hellaswag", "acc_norm"),
        TaskSpec("winogrande", "acc"),
        TaskSpec("arc_easy", "acc"),
        TaskSpec("arc_challenge", "acc_norm"),
        TaskSpec("openbookqa", "acc_norm"),
        # Table 8: the paper gives no shot counts; 5-shot is the usual MMLU and lm-eval's GSM8K default.
        TaskSpec("mmlu", "acc", num_fewshot=5, in_average=False),
        TaskSpec("gsm8k", "exact_match", num_fewshot=5, filter="strict-match", in_average=False),
    )
}
PAPER_TASKS = tuple(n for n, s in TASKS.items() if s.in_average)
ALIASES = {
    "arc_e": "arc_easy",
    "arc-e": "arc_easy",
    "arc_c": "arc_challenge",
    "arc-c": "arc_challenge",
    "obqa": "openbookqa",
    "paper": ",".join(PAPER_TASKS),
    "all": ",".join(TASKS),
}


def parse_tasks(text: str | list[str]) -> list[str]:
    """``"paper,mmlu"`` or ``["boolq", "arc_c"]`` -> canonical task names (order kept, no duplicates)."""
    items = text.split(",") if isinstance(text, str) else [t for x in text for t in x.split(",")]
    out: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if not name:
            continue
        expanded = ALIASES.get(name, name).split(",")
        for n in expanded:
            if n not in TASKS:
                raise NumpruneError(f"unknown task {raw!r}; choose from {sorted(TASKS)} or {sorted(ALIASES)}")
            if n not in out:
                out.append(n)
    return out


def task_manager(include_path: str | Path | None = None):
    """lm-eval's TaskManager (it indexes ~10k YAML files, so one per include path and process)."""
    return _task_manager(str(include_path) if include_path else None)


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None):
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise NumpruneError("zero-shot evaluation needs lm-eval: pip install 'lm-eval>=0.4.5,<0.5'") from err
    return TaskManager(include_path=include_path)


def registered_config(tm, name: str) -> dict[str, Any]:
    """lm-eval's own config of a registered task, includes and ``!function`` entries resolved."""
    from lm_eval.tasks._yaml_loader import load_yaml  # the loader TaskManager itself uses

    entry = tm.task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise NumpruneError(f"lm-eval has no task {name!r}")
    cfg = copy.deepcopy(load_yaml(entry.yaml_path, resolve_func=True))
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    return cfg


def _split_files(folder: Path, cfg: dict[str, Any]) -> dict[str, str]:
    files = {}
    for key in SPLIT_KEYS:
        split = cfg.get(key)
        if split is None:
            continue
        for ext in ("jsonl", "json"):
            if (folder / f"{split}.{ext}").exists():
                files[split] = str(folder / f"{split}.{ext}")
                break
    return files


def with_local_data(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Point a task config at JSON files in ``folder`` (one per split); splits without a file are dropped."""
    files = _split_files(folder, cfg)
    if not files:
        raise NumpruneError(
            f"no split files for task {cfg['task']} in {folder} (expected e.g. "
            f"{[cfg.get(k) for k in SPLIT_KEYS if cfg.get(k)]} as .jsonl)"
        )
    cfg = {**cfg, "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}}
    for key in SPLIT_KEYS:
        if cfg.get(key) is not None and cfg[key] not in files:
            cfg[key] = None
    if cfg.get("test_split") is None and cfg.get("validation_split") is None:
        raise NumpruneError(f"task {cfg['task']}: {folder} holds no evaluation split")
    return cfg


def _subject_filter(subject: str, inner: Callable | None) -> Callable:
    def process_docs(dataset):
        dataset = dataset.filter(lambda doc: doc["subject"] == subject)
        return inner(dataset) if inner is not None else dataset

    return process_docs


def _subjects(path: str) -> list[str]:
    import json

    with open(path) as fh:
        return sorted({json.loads(line)["subject"] for line in fh if line.strip()})


def task_configs(tm, name: str, data_dir: str | Path | None) -> tuple[list[dict[str, Any] | str], str]:
    """Configs to evaluate for one of ``TASKS`` and where the data comes from (``hub:...`` or ``local:...``).

    MMLU with local data: one lm-eval subject task per subject present in the file (each filtered to its
    subject, so few-shot examples come from the same subject, as in lm-eval's own MMLU group).
    """
    folder = Path(data_dir) / name if data_dir else None
    if folder is None or not folder.is_dir():
        source = "cais/mmlu" if name == "mmlu" else registered_config(tm, name).get("dataset_path")
        return [name], f"hub:{source}"  # the registered task (or group) as lm-eval ships it
    if name != "mmlu":
        return [with_local_data(registered_config(tm, name), folder)], f"local:{folder}"
    probe = with_local_data(registered_config(tm, "mmlu_abstract_algebra"), folder)
    eval_split = probe.get("test_split") or probe["validation_split"]
    configs: list[dict[str, Any] | str] = []
    for subject in _subjects(probe["dataset_kwargs"]["data_files"][eval_split]):
        cfg = with_local_data(registered_config(tm, f"mmlu_{subject}"), folder)
        cfg["process_docs"] = _subject_filter(subject, cfg.get("process_docs"))
        configs.append(cfg)
    return configs, f"local:{folder}"
