"""Issue 3's quality benchmark: every method x 10-50% on SmolLM2-135M, same calibration, same evaluation.

    PYTHONPATH=. NUMPRUNE_DATA_DIR=../shared/data python experiments/quality_benchmark.py --threads 1 \
        [--methods numerical flap ...] [--ratios 0.2 0.4]

Protocol: calibration = 32 seeded random 256-token windows of WikiText-2 *validation* (the train split is not
available offline), identical for every method (LLM-Pruner's Taylor pass uses the first 10 of them).
Ratio = fraction of attention+MLP parameters removed (every row states the achieved ratio). Perplexity: the
first 16 non-overlapping 256-token windows of WikiText-2 test and PTB test, and of PTB validation (held out:
the split defaults are chosen on, never the test splits). Pruning wall time and peak RSS of the full pipeline
are rows at 20%; at the other ratios the methods that score from the dense pass reuse one dense calibration
pass per process (identical pruned models) and record only ``prune_seconds_excl_dense_pass``.
Rows go to results/quality_smollm2.csv; a rerun skips rows already there, so the grid resumes, and two processes
may share the CSV (each with its own ``--methods``: rows are appended under a file lock).
"""

from __future__ import annotations

import argparse
import os

import torch

from numprune.methods.numerical import PAPER_READING
from numprune.points import text_point
from numprune.runner import run_points

RATIOS = (0.2, 0.4, 0.1, 0.3, 0.5)  # in this order, so that a partial grid has the ablation ratios first
TIMED_RATIO = 0.2  # this point of each method runs the full pipeline; the others share one dense pass
# Baselines as their official code runs them (docs/quality.md, "Fidelity to the official code"), then the methods
# that rewrite the model (residual stream sliced, whole blocks removed), then ours.
METHODS = ("flap", "slimgpt", "wanda-sp", "mag-sp", "llm-pruner", "magnitude", "random", "slicegpt", "depth")
METHODS += ("numerical", "numerical+")
# label -> (method, options). Every head/channel method prunes whole KV groups (gqa="groups": the official codes
# are MHA-only, docs/quality.md); "numerical" is the paper's reading (numprune.methods.numerical.PAPER_READING:
# dense compensation, damp 0.1); "numerical+" is numprune's defaults, chosen on held-out PTB validation
# (docs/ablations.md): query heads within KV groups, sequential compensation. Every row records all its options.
VARIANTS = {
    "numerical": ("numerical", dict(PAPER_READING)),
    "numerical+": ("numerical", {"gqa": "query", "compensation": "sequential"}),
}
EVALS = ("wikitext2", "ptb", "ptb:validation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/quality_smollm2.csv")
    parser.add_argument("--data-dir", default=os.environ.get("NUMPRUNE_DATA_DIR", "../shared/data"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--dense", action="store_true", help="also the dense row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points = [text_point("quality", ratio=0.0, evals=EVALS, data_dir=args.data_dir)] if args.dense else []
    points += [
        text_point(
            "quality",
            method=VARIANTS.get(m, (m, {}))[0],
            label=m,
            ratio=r,
            evals=EVALS,
            options={"gqa": "groups", **VARIANTS.get(m, (m, {}))[1]},
            share_stats=r != TIMED_RATIO,
            data_dir=args.data_dir,
        )
        for r in args.ratios
        for m in args.methods
    ]
    run_points(points, args.results)


if __name__ == "__main__":
    main()
