"""Peak memory of the float64 solves of one projection, in ``D x D`` float64 matrices; results/solve_memory.csv.

    PYTHONPATH=. python experiments/bench_solve_memory.py --dim 3072 --before-tree ../cost-before

For a random positive definite Gram matrix of ``--dim`` inputs and a bf16 weight of ``--out`` outputs, each
solve runs once: the numerical score (``A = (W W^T) o G``, its ridged Cholesky factor, the closed-form solve),
the split refit-error curve (``numprune.curves.ordered_refit_errors``, every prefix of a random order) and the
Eq. 11 refit of 80% of the columns (from the full Gram matrix and from its kept rows). A thread polls the
process's RSS every millisecond; the peak above the RSS before the call is reported in units of one
``D x D`` float64 matrix (the inputs are allocated before). ``--before-tree``: the same worker run against
another checkout's ``numprune`` (a before/after in one run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _rss_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_above(fn: Callable[[], object]) -> tuple[float, float]:
    """(peak RSS above the RSS before ``fn()``, GiB; CPU seconds of ``fn``), RSS polled every millisecond."""
    gc.collect()
    base = _rss_gib()
    top, done = [base], threading.Event()

    def poll() -> None:
        while not done.is_set():
            top[0] = max(top[0], _rss_gib())
            time.sleep(0.001)

    thread = threading.Thread(target=poll)
    thread.start()
    t0 = time.process_time()
    fn()
    seconds = time.process_time() - t0
    done.set()
    thread.join()
    return max(top[0], _rss_gib()) - base, seconds


SOLVES = ("numerical_score", "split_curve", "refit_80pct_full_gram", "refit_80pct_kept_rows")


def measure(dim: int, out: int, solve: str) -> tuple[float, float]:
    """One call of ``solve`` (GiB above the RSS before it, CPU seconds) with the ``numprune`` that is importable
    (``PYTHONPATH``), in a process of its own: the RSS of a process that ran other solves before keeps some of
    their freed heap, which the next one reuses unseen."""
    from numprune.compensate import compensate
    from numprune.curves import ordered_refit_errors
    from numprune.score import numerical_score

    torch.manual_seed(0)
    torch.set_num_threads(1)
    half = torch.randn(dim, dim // 2, dtype=torch.float64)
    gram = half @ half.T
    del half
    gram.diagonal().add_(1.0)  # positive definite: a rank-deficient half plus a floor
    weight = torch.randn(out, dim, dtype=torch.bfloat16)
    order = torch.randperm(dim)
    keep = torch.randperm(dim)[: int(0.8 * dim)].sort().values
    kept_rows = gram[keep].clone()
    solves: dict[str, Callable[[], object]] = {
        "numerical_score": lambda: numerical_score(gram, weight, 0.2),
        "split_curve": lambda: ordered_refit_errors(gram, weight, order, damp=0.1, undamped=True),
        "refit_80pct_full_gram": lambda: compensate(gram, weight, keep, damp=0.1),
        "refit_80pct_kept_rows": lambda: compensate(kept_rows, weight, keep, damp=0.1),
    }
    return peak_above(solves[solve])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=3072, help="inputs of the projection (D)")
    p.add_argument("--out", type=int, default=1024, help="outputs of the projection")
    p.add_argument("--before-tree", help="also measure the numprune of this checkout (code: before)")
    p.add_argument("--csv", default="results/solve_memory.csv")
    p.add_argument("--worker", choices=SOLVES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.dim, args.out, args.worker)))
        return
    from numprune.provenance import library_versions
    from numprune.results import append_rows, git_commit

    here = Path(__file__).resolve().parents[1]
    trees = [("after", here)] + ([("before", Path(args.before_tree).resolve())] if args.before_tree else [])
    unit = 8 * args.dim * args.dim / 2**30
    rows = []
    for code, tree in trees:  # each solve in a fresh process, with that checkout's numprune
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
        for name in SOLVES:
            cmd = [sys.executable, __file__, "--worker", name, "--dim", str(args.dim), "--out", str(args.out)]
            run = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            gib, seconds = json.loads(run.stdout.splitlines()[-1])
            print(f"{code:6s} {name:24s} peak +{gib / unit:.2f} D^2 ({gib:.3f} GiB), {seconds:.2f} CPU s", flush=True)
            base = {"experiment": "solve_memory", "model": f"random-gram-D{args.dim}", "method": name,
                    "ratio": 0.2, "seed": 0, "versions": library_versions(), "git_commit": git_commit(tree),
                    "options": {"code": code, "dim": args.dim, "out": args.out, "threads": 1,
                                "device": "cpu"}}  # fmt: skip
            values = {"peak_over_dxd_float64": gib / unit, "peak_gib": gib, "cpu_seconds": seconds}
            rows += [{**base, "metric": k, "value": v} for k, v in values.items()]
    append_rows(args.csv, rows, replace=True)  # a re-run replaces its own rows
    print(f"wrote {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
