"""Issue 3's ablations of numerical pruning on SmolLM2-135M (20% and 40%), one CSV per ablation; issue 13's
head/channel exchange rate (``--only exchange``: 10-50% from numprune's defaults, decode speed paired with dense).

    PYTHONPATH=. NUMPRUNE_DATA_DIR=../shared/data python experiments/ablations.py --threads 1 [--only damp lam]
    PYTHONPATH=. NUMPRUNE_DATA_DIR=../shared/data python experiments/ablations.py --threads 1 --only exchange \
        [--ratios 0.3 0.5] [--labels alpha error]

Same protocol as experiments/quality_benchmark.py (32 x 256 calibration windows of WikiText-2 validation,
seed 0; ratio of attention+MLP parameters). Defaults are chosen on the held-out PTB *validation* split (first
16 non-overlapping 256-token windows); WikiText-2 test (first 16 windows) is reported, never used to choose.
Rows go to results/ablation_<name>.csv (resumable).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from numprune.evaluators import Evaluator
from numprune.methods.numerical import PAPER_READING, Numerical
from numprune.points import text_point
from numprune.runner import Runner

RATIOS = (0.2, 0.4)
# One-factor ablations start from the paper's reading (whole KV groups, compensation from the dense pass) with
# the chosen damping; the "defaults" ablation then combines the winners (numprune's defaults).
BASE = dict(PAPER_READING)  # numprune.methods.numerical.PAPER_READING: the one definition
EVALS = ("ptb:validation", "wikitext2")

# name -> list of (label, options, nsamples); the first entry of each is the PruneConfig default (shared rows).
ABLATIONS: dict[str, list[tuple[str, dict, int]]] = {
    "damp": [(f"damp={d}", {"damp": d}, 32) for d in (0.001, 0.01, 0.03, 0.1, 0.3, 1.0)],
    "head_scaling": [("alpha", {"head_scaling": "alpha"}, 32), ("none", {"head_scaling": "none"}, 32)],
    "compensation": [(c, {"compensation": c}, 32) for c in ("dense", "sequential", "none")],
    "lam": [("hard-limit", {"compensation": "dense"}, 32)]
    + [(f"lam={v:g}", {"lam": v}, 32) for v in (1e-4, 1e-2, 1.0, 100.0)],
    "box": [("closed-form", {"compensation": "dense"}, 32)]
    + [(f"box-T={t}", {"box": True, "iters": t}, 32) for t in (1, 5, 50)],
    "gqa": [(g, {"gqa": g}, 32) for g in ("groups", "query")],
    "allocation": [(a, {"allocation": a}, 32) for a in ("global", "uniform")],
    "ratio_of": [(r, {"ratio_of": r}, 32) for r in ("params", "units")],
    # the paper's reading (whole KV groups, dense compensation) against the winners of the gqa and compensation
    # ablations, alone and together: what the defaults are chosen from
    "defaults": [
        ("groups+dense", {"gqa": "groups", "compensation": "dense"}, 32),
        ("query+dense", {"gqa": "query", "compensation": "dense"}, 32),
        ("groups+sequential", {"gqa": "groups", "compensation": "sequential"}, 32),
        ("query+sequential", {"gqa": "query", "compensation": "sequential"}, 32),
    ],
    "nsamples": [("0 (no compensation)", {"compensation": "none"}, 32)] + [(str(n), {}, n) for n in (16, 32, 64, 128)],
}


# Issue 13: how heads and channels are compared, from numprune's defaults (query heads within KV groups,
# sequential compensation, damp 0.1); the test splits are reported, PTB validation chooses.
EXCHANGE = [
    ("alpha", {"head_scaling": "alpha"}),  # the paper's alpha (numprune's default before issue 13)
    ("none", {"head_scaling": "none"}),
    ("split", {"head_scaling": "split"}),  # alpha's per-layer budgets, heads vs channels by refit error
    ("error", {"head_scaling": "error"}),  # refit error per parameter, greedy curves (numprune.exchange)
    ("error-absolute", {"head_scaling": "error", "error_norm": "absolute"}),  # raw errors across layers
    ("error+groups", {"head_scaling": "error", "gqa": "groups"}),  # ... over whole KV groups (KV cache goes)
    ("error[numerical-order]", {"head_scaling": "error", "error_order": "numerical"}),  # Algorithm 1's order
]
EXCHANGE_BASE = {"gqa": "query", "compensation": "sequential", "damp": 0.1}
EXCHANGE_RATIOS = (0.3, 0.5, 0.1, 0.2, 0.4)
EXCHANGE_EVALS = ("ptb:validation", "wikitext2", "ptb")
# decode tokens/s at batch 1 (64-token prompt, 32 new tokens), alternating with the dense model in one process
SPEED = Evaluator("speed", "numprune.eval.speed.paired_decode", {"dense": "smollm2"})


def exchange(ratios: list[float], labels: list[str], data_dir: str, model: str = "smollm2") -> None:
    """The exchange ablation: a dense point, then every label at every ratio (ratio-major: a partial grid has
    every rule at the first ratios); rows to results/ablation_exchange.csv (another model:
    results/ablation_exchange_MODEL.csv, without the decode-speed rows; resumable)."""
    smollm2 = model == "smollm2"
    path = f"results/ablation_exchange{'' if smollm2 else '_' + model}.csv"
    runner = Runner(path, evaluators=[SPEED] if smollm2 else [])
    common = dict(evals=EXCHANGE_EVALS, data_dir=data_dir, model=model)
    points = [text_point("ablation-exchange", ratio=0.0, **common)]  # type: ignore[arg-type]
    for ratio in ratios:
        for label, options in EXCHANGE:
            if label in labels:
                points.append(text_point(
                    "ablation-exchange", ratio=ratio, options={**EXCHANGE_BASE, **options},
                    label=f"numerical[{label}]", share_stats=True, **common,  # type: ignore[arg-type]
                ))  # fmt: skip
    for row in runner.run(points):
        what = (row["method"], row["ratio"], row["metric"], row.get("eval_dataset", ""), f"{row['value']:.4g}")
        print("exchange", *what, row.get("heads_pruned", ""), row.get("kv_bytes_per_token", ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("NUMPRUNE_DATA_DIR", "../shared/data"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=[*ABLATIONS, "exchange"], choices=[*ABLATIONS, "exchange"])
    parser.add_argument("--ratios", nargs="+", type=float, help=f"default {RATIOS} ({EXCHANGE_RATIOS} for exchange)")
    parser.add_argument("--labels", nargs="+", default=[e[0] for e in EXCHANGE], help="exchange rules to run")
    parser.add_argument("--base", default=json.dumps(BASE), help="JSON options every point starts from")
    parser.add_argument("--model", default="smollm2", help="exchange only: smollm2 or gemma3-270m")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "exchange" in args.only:
        exchange(args.ratios or list(EXCHANGE_RATIOS), args.labels, args.data_dir, args.model)
    args.only = [name for name in args.only if name != "exchange"]
    base = json.loads(args.base)
    if "damp" not in base:
        base["damp"] = Numerical.default_damp
    runners = {name: Runner(f"results/ablation_{name}.csv") for name in args.only}  # one dense-stats cache each

    for name in args.only:
        for ratio in args.ratios or RATIOS:
            for label, options, nsamples in ABLATIONS[name]:
                p = text_point(
                    f"ablation-{name}",
                    ratio=ratio,
                    options={**base, **options},
                    nsamples=nsamples,
                    evals=EVALS,
                    label=f"numerical[{label}]",
                    share_stats=True,  # one dense pass per calibration set; time rows exclude it
                    data_dir=args.data_dir,
                )
                for row in runners[name].run([p]):
                    value = row["value"]
                    print(name, label, ratio, row["metric"], row.get("eval_dataset", ""), f"{value:.4g}", flush=True)


if __name__ == "__main__":
    main()
