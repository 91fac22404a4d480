"""Zero-shot (and few-shot MMLU/GSM8K) accuracy of a dense or pruned model through lm-eval (Table 2/8/9).

The model is evaluated in memory with lm-eval's Hugging Face wrapper (``HFLM(pretrained=model)``), so a
model pruned a moment ago and a saved one go through the same code. Metric convention (LLM-Pruner, which
the paper follows): ``acc`` for BoolQ/PIQA/WinoGrande/ARC-e, ``acc_norm`` for HellaSwag/ARC-c/OBQA, and
the unweighted mean of those seven numbers as the average. Values are fractions in [0, 1] (the paper: %).

    numprune zeroshot --model smollm2 --tasks paper --data-dir /path/to/tasks --limit 100 --results r.csv
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from numprune.errors import NumpruneError
from numprune.eval.lm_tasks import PAPER_TASKS, TASKS, parse_tasks, task_configs, task_manager

AVERAGE_TASK = "avg7"


@dataclass
class TaskScore:
    """One reported number: the task's headline metric, with everything needed to reproduce it."""

    task: str
    metric: str
    value: float
    num_fewshot: int
    task_version: str
    n_samples: int
    source: str  # hub:<dataset> or local:<folder>
    stderr: float | None = None
    filter: str = "none"
    metrics: dict[str, float] = field(default_factory=dict)  # every metric lm-eval reported for the task


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise NumpruneError("zero-shot evaluation needs lm-eval: pip install 'lm-eval>=0.4.5,<0.5'") from err
    return lm_eval, HFLM


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) else None


def _collect(out: dict[str, Any], name: str, shots: int, source: str) -> TaskScore:
    """Headline metric of one task from a ``simple_evaluate`` result (subject tasks are size-weighted)."""
    spec = TASKS[name]
    key = f"{spec.metric},{spec.filter}"
    results, n_samples = out["results"], out.get("n-samples", {})
    leaves = [t for t in results if t in n_samples]
    if name in results and name not in n_samples:  # a group (hub MMLU): lm-eval aggregated it already
        leaves, head = [name], results[name]
        n = sum(int(v["effective"]) for v in n_samples.values())
        value, stderr = float(head[key]), _number(head.get(f"{spec.metric}_stderr,{spec.filter}"))
        version = str(out.get("versions", {}).get(name, ""))
    else:
        if not leaves:
            raise NumpruneError(f"lm-eval returned no results for {name}")
        # Local MMLU: one task per subject, weighted by size like lm-eval's own MMLU group (weight_by_size).
        sizes = {t: int(n_samples[t]["effective"]) for t in leaves}
        n = sum(sizes.values())
        value = sum(float(results[t][key]) * sizes[t] for t in leaves) / max(n, 1)
        stderr = _number(results[leaves[0]].get(f"{spec.metric}_stderr,{spec.filter}")) if len(leaves) == 1 else None
        version = str(out.get("versions", {}).get(leaves[0], ""))
    used = {int(out.get("n-shot", {}).get(t, shots)) for t in leaves}
    metrics = {k: float(v) for k, v in results[leaves[0]].items() if isinstance(v, (int, float)) and "stderr" not in k}
    return TaskScore(
        task=name,
        metric=spec.metric,
        value=value,
        num_fewshot=used.pop() if len(used) == 1 else shots,
        task_version=version,
        n_samples=n,
        source=source,
        stderr=stderr,
        filter=spec.filter,
        metrics=metrics if len(leaves) == 1 else {key: value},
    )


def average(scores: list[TaskScore]) -> TaskScore | None:
    """The paper's 7-task average (unweighted mean of each task's headline metric), if all seven are there."""
    by_task = {s.task: s for s in scores}
    if not all(t in by_task for t in PAPER_TASKS):
        return None
    parts = [by_task[t] for t in PAPER_TASKS]
    return TaskScore(
        task=AVERAGE_TASK,
        metric="mean_acc_or_acc_norm",
        value=sum(s.value for s in parts) / len(parts),
        num_fewshot=0,
        task_version="",
        n_samples=sum(s.n_samples for s in parts),
        source=";".join(sorted({s.source for s in parts})),
        metrics={f"{s.task}/{s.metric}": s.value for s in parts},
    )


def evaluate_zeroshot(
    model: nn.Module,
    tokenizer: Any,
    tasks: str | list[str] = "paper",
    *,
    data_dir: str | Path | None = None,
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    num_fewshot: dict[str, int] | None = None,
    batch_size: int = 1,
    max_length: int | None = None,
    seed: int = 0,
) -> list[TaskScore]:
    """Score ``model`` on ``tasks`` (names or aliases: ``paper``, ``all``, ``arc_c``, ...).

    Each task runs its own ``simple_evaluate`` call so that its shot count is its own (``TASKS`` defaults,
    overridden by ``num_fewshot``). With ``data_dir``, tasks whose folder exists read local files
    (``lm_tasks`` documents the layout); the others use lm-eval's hub datasets. Returns one score per task
    plus the 7-task average when all seven paper tasks were asked for.
    """
    lm_eval, HFLM = _lm_eval()
    names = parse_tasks(tasks)
    unknown = set(num_fewshot or {}) - set(names)
    if unknown:
        raise NumpruneError(f"num_fewshot given for tasks not evaluated: {sorted(unknown)}")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    tm = task_manager(include_path)
    scores = []
    for name in names:
        shots = (num_fewshot or {}).get(name, TASKS[name].num_fewshot)
        configs, source = task_configs(tm, name, data_dir)
        try:
            out = _run(lm_eval, lm, configs, shots, limit, tm, seed)
        except Exception as err:  # hub tasks offline fail deep inside `datasets`; say what to do instead
            if not source.startswith("hub:"):
                raise
            raise NumpruneError(
                f"{name}: loading {source} failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                f"offline, pass --data-dir with {name}/<split>.jsonl files (see numprune/eval/lm_tasks.py)"
            ) from err
        if out is None:  # non-zero ranks under distributed evaluation
            continue
        scores.append(_collect(out, name, shots, source))
    avg = average(scores)
    return [*scores, avg] if avg is not None else scores


def _run(lm_eval: Any, lm: Any, configs: list, shots: int, limit: int | float | None, tm: Any, seed: int) -> Any:
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=configs,
        num_fewshot=shots,
        limit=limit,
        task_manager=tm,
        log_samples=False,
        bootstrap_iters=1000,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def result_rows(
    scores: list[TaskScore],
    *,
    model: str,
    model_hash: str = "",
    plan: Any = None,
    limit: int | float | None = None,
    experiment: str = "zeroshot",
) -> list[dict[str, Any]]:
    """Rows in the ``numprune.results`` schema: one per task (and the average), with versions and shots; a
    pruned model's rows say how it was pruned (``numprune.results.plan_columns``)."""
    import lm_eval
    import transformers

    from numprune import __version__
    from numprune.results import git_commit, plan_columns, portable

    base: dict[str, Any] = {"experiment": experiment, "model": portable(model), "model_hash": model_hash,
                            "git_commit": git_commit(), "method": "dense", "ratio": 0.0, "ratio_achieved": 0.0,
                            "options": {}}  # fmt: skip
    if plan is not None:
        base.update(plan_columns(plan))
    versions = {
        "lm_eval": getattr(lm_eval, "__version__", "unknown"),
        "numprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    rows = []
    for s in scores:
        how = {"num_fewshot": s.num_fewshot, "filter": s.filter, "limit": limit, "task_version": s.task_version}
        rows.append(
            {
                **base,
                "eval_dataset": s.task,
                "eval_source": s.source,
                "eval_windows": s.n_samples,
                "metric": s.metric,
                "value": s.value,
                "options": {**base["options"], **how},
                "versions": {**versions, "task": s.task_version},
            }
        )
    return rows
