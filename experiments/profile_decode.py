"""Where a decode step's time goes, dense vs pruned (torch.profiler): why the speedup misses the bytes limit.

    PYTHONPATH=. python experiments/profile_decode.py --model smollm2 --ratio 0.5 --threads 1

Prunes the model with ``prune_`` (8 x 256 WikiText-2 validation tokens, as experiments/bench_speed.py) unless
``--pruned DIR`` names a saved pruned model, then for each model runs greedy decode of ``--new-tokens``
after a 64-token prompt at batch 1, timed without the profiler (median of ``--reps``) and once under
``torch.profiler``. Self CPU time is grouped into the weight GEMMs (``aten::mm``/``addmm``, ``linear``:
what reads the weights), attention kernels, and everything else (elementwise ops, norms, rotary, cache
updates, Python and dispatcher overhead), per decode step. Prints a table and the speedup the bytes limit
predicts when only the GEMM part shrinks; writes ``results/profile_decode.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

GEMM = ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm", "aten::mv")
ATTENTION = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu")


def profile(model, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """Self CPU milliseconds per decode step by group (prefill subtracted with a 2-token run)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def grouped(n: int) -> dict[str, float]:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            from numprune.eval.speed import time_generation

            time_generation(model, prompt, n)
        out = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
        for ev in prof.key_averages():
            group = "gemm" if ev.key in GEMM else "attention" if ev.key in ATTENTION else "other"
            out[group] += ev.self_cpu_time_total / 1e3
        return out

    long, short = grouped(new_tokens), grouped(2)
    steps = new_tokens - 2
    return {k: (long[k] - short[k]) / steps for k in long}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--pruned", default=None, help="a saved pruned model (default: prune --model here)")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument(
        "--head-scaling",
        default="alpha",
        choices=["alpha", "none", "split"],
        help="results/ rows: alpha, the default before issue 13's split",
    )
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/profile_decode.csv")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from numprune import prune_, save_pruned
    from numprune.data import calibration_windows, load_corpus
    from numprune.eval.speed import decode_bytes_per_step, time_generation
    from numprune.hub import load_model

    dense, tok = load_model(args.model)
    if args.pruned:
        pruned, _ = load_model(args.pruned)
    else:
        pruned, _ = load_model(args.model)
        calib = calibration_windows(load_corpus("wikitext2:validation"), tok, 8, 256, seed=0)
        plan = prune_(pruned, ratio=args.ratio, calibration=calib, head_scaling=args.head_scaling, progress=False)
        with tempfile.TemporaryDirectory() as tmp:  # save and reload: the model bench_speed measures
            save_pruned(pruned, Path(tmp) / "m", plan, tokenizer=tok)
            pruned, _ = load_model(str(Path(tmp) / "m"))
    prompt = torch.randint(0, len(tok), (1, 64), generator=torch.Generator().manual_seed(0))
    context = 64 + args.new_tokens // 2
    rows = []
    for name, model in (("dense", dense), (f"pruned{round(100 * args.ratio)}", pruned)):
        time_generation(model, prompt, args.new_tokens)  # warm-up
        tps = statistics.median(time_generation(model, prompt, args.new_tokens)[1] for _ in range(args.reps))
        groups = profile(model, prompt, args.new_tokens)
        ops = sum(1 for _ in model.modules())
        rows.append({"model": name, "decode_tokens_per_s": tps, "ms_per_step": 1e3 / tps,
                     "bytes_per_step": decode_bytes_per_step(model, 1, context), "modules": ops,
                     **{f"{k}_ms_per_step_profiled": v for k, v in groups.items()}})  # fmt: skip
    d, q = rows
    limit = d["bytes_per_step"] / q["bytes_per_step"]
    speedup = q["decode_tokens_per_s"] / d["decode_tokens_per_s"]
    # only the weight GEMMs read weights: they shrink by the bytes ratio, the rest stays (profiled shares)
    tot_d = sum(d[f"{k}_ms_per_step_profiled"] for k in ("gemm", "attention", "other"))
    tot_q = sum(q[f"{k}_ms_per_step_profiled"] for k in ("gemm", "attention", "other"))
    gemm_share = d["gemm_ms_per_step_profiled"] / tot_d
    predicted = 1 / (gemm_share / limit + (1 - gemm_share))
    for r in rows:
        r.update(limit_speedup=limit, speedup=speedup, speedup_over_limit=speedup / limit,
                 gemm_share_dense=gemm_share, predicted_speedup_fixed_overhead=predicted,
                 gemm_speedup_profiled=d["gemm_ms_per_step_profiled"] / q["gemm_ms_per_step_profiled"],
                 total_speedup_profiled=tot_d / tot_q, threads=args.threads, new_tokens=args.new_tokens)  # fmt: skip
    from numprune.provenance import library_versions
    from numprune.results import append_rows, git_commit

    results = []
    for r, ratio in zip(rows, (0.0, args.ratio)):
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
        base = {"experiment": "profile_decode", "model": args.model, "method": "dense" if not ratio else "numerical",
                "ratio": ratio, "seed": 0, "eval_dataset": "random-prompt", "eval_source": "torch.randint",
                "eval_seqlen": 64, "versions": library_versions(), "git_commit": git_commit(),
                "options": {"batch": 1, "threads": args.threads, "new_tokens": args.new_tokens, "reps": args.reps,
                            "device": "cpu", "dtype": "fp32"}}  # fmt: skip
        results += [{**base, "metric": k, "value": v} for k, v in r.items() if isinstance(v, (int, float))]
    out = Path(args.out)
    if out.exists():
        out.unlink()  # one run per file: the ratios are only meaningful within one run
    append_rows(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
