"""Issue 3's quality benchmark: every method x 10-50% on SmolLM2-135M, same calibration, same evaluation.

    PYTHONPATH=. NUMPRUNE_DATA_DIR=../shared/data python experiments/quality_benchmark.py --threads 1 \
        [--methods numerical flap ...] [--ratios 0.2 0.4]

Protocol: calibration = 32 seeded random 256-token windows of WikiText-2 *validation* (the train split is not
available offline), identical for every method (LLM-Pruner's Taylor pass uses the first 10 of them).
Ratio = fraction of attention+MLP parameters removed (every row states the achieved ratio). Perplexity: the
first 16 non-overlapping 256-token windows of WikiText-2 test and PTB test, and of PTB validation (held out:
the split defaults are chosen on, never the test splits). Pruning wall time and peak RSS of the full pipeline
are rows at 20%; the other ratios reuse one dense calibration pass per process (identical pruned models) and
record only ``prune_seconds_excl_dense_pass``.
Rows go to results/quality_smollm2.csv; a rerun skips rows already there, so the grid resumes.
"""

from __future__ import annotations

import argparse
import os

import torch

from numprune.points import text_point
from numprune.runner import run_points

RATIOS = (0.2, 0.4, 0.1, 0.3, 0.5)  # in this order, so that a partial grid has the ablation ratios first
TIMED_RATIO = 0.2  # this point of each method runs the full pipeline; the others share one dense pass
METHODS = ("numerical+", "numerical", "flap", "slimgpt", "wanda-sp", "llm-pruner", "magnitude", "random")
METHODS += ("slicegpt", "depth")  # they rewrite the model: residual stream sliced, whole blocks removed (issue 10)
# label -> (method, options). Every method prunes whole KV groups (the paper's reading of GQA); "numerical" is the
# paper's method as the paper reads (dense compensation); "numerical+" is numprune's defaults, chosen on held-out
# PTB validation (docs/ablations.md): query heads within KV groups, sequential compensation.
VARIANTS = {
    "numerical": ("numerical", {"compensation": "dense", "head_scaling": "alpha"}),
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
