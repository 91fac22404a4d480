"""Generation speed and memory of dense vs pruned models (paper Figure 5); writes results/speed.csv + a PNG.

CPU, the real SmolLM2-135M pruned by ``prune_`` (what docs/speed.md reports; ~10 min on 1 thread):

    PYTHONPATH=. python experiments/bench_speed.py --model smollm2 --ratios 0,0.2,0.5 --round-to 1,64 \
        --batches 1,8 --reps 2 --rounds 2 --new-tokens 32

GPU, a LLaMA-7B-shaped model with random weights (speed depends on shapes only; no download), bf16:

    PYTHONPATH=. python experiments/bench_speed.py --config llama-7b --device cuda --dtype bf16 \
        --ratios 0,0.1,0.2,0.3,0.4,0.5 --round-to 1,64 --batches 1,16 --reps 5 --rounds 2 --new-tokens 128 \
        --out results/speed_gpu.csv --png results/speed_gpu.png

Every (model, ratio, round_to) runs in its own subprocess, so peak memory (device max-allocated on GPU, peak
RSS on CPU) belongs to that model alone. Rows with the same key in the CSV are replaced, not duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_CALIB = Path(os.environ.get("NUMPRUNE_DATA_DIR", "../shared/data")) / "wikitext2" / "wiki.valid.tokens"


def host() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
    return names[0] if names else platform.machine()


def calibration(tok, path: Path, nsamples: int, seqlen: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Non-overlapping windows from the start of a local text file (random tokens when it is missing)."""
    if path.exists():
        text = path.read_text()[: nsamples * seqlen * 8]  # ~4 chars a token: plenty
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
        if ids.numel() >= nsamples * seqlen:
            from numprune.results import portable

            info = {"dataset": "wikitext2-valid-tokens", "source": portable(path), "seed": seed}
            return ids[: nsamples * seqlen].reshape(nsamples, seqlen), info
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(tok), (nsamples, seqlen), generator=gen), {"dataset": "random", "seed": seed}


def prepare_pruned(args, ratio: float, round_to: int) -> Path:
    """Prune the real model once per (ratio, round_to) and save it; reused by later runs."""
    from numprune import prune_, save_pruned
    from numprune.hub import load_model

    scaling = "" if args.head_scaling == "alpha" else f"-{args.head_scaling}"  # alpha: the folders of before
    out = Path(args.work_dir) / f"{args.model.replace('/', '_')}-r{ratio}-k{round_to}{scaling}"
    if (out / "config.json").exists():
        return out
    model, tok = load_model(args.model, dtype=torch.float32)
    calib, info = calibration(tok, Path(args.calib_file), args.calib_nsamples, args.calib_seqlen, args.seed)
    plan = prune_(
        model,
        ratio=ratio,
        calibration=calib,
        calibration_info=info,
        round_to=round_to,
        head_scaling=args.head_scaling,
        progress=False,
    )
    print(f"pruned r={ratio} round_to={round_to}: {plan.summary()}", file=sys.stderr)
    save_pruned(model, out, plan, tokenizer=tok, overwrite=True)
    return out


def worker(spec: dict) -> dict:
    """Run in a fresh process: build or load one model, measure each batch size, return JSON-able results."""
    from numprune.eval import speed

    torch.set_num_threads(spec["threads"])
    baseline = speed.rss_peak_gib() if spec["device"] == "cpu" else 0.0
    dtype = DTYPES[spec["dtype"]]
    if spec.get("config"):
        model = speed.random_pruned_llama(spec["config"], spec["ratio"], round_to=spec["round_to"], dtype=dtype,
                                          device=spec["device"], seed=spec["seed"])  # fmt: skip
    else:
        from numprune.hub import load_model

        model, _ = load_model(spec["path"], dtype=dtype, device=spec["device"])
    params = sum(p.numel() for p in model.parameters())
    blocks = speed.attn_mlp_params(model)
    results = [asdict(speed.measure(model, b, prompt_len=spec["prompt_len"], new_tokens=spec["new_tokens"],
                                    reps=spec["reps"], seed=spec["seed"])) for b in spec["batches"]]  # fmt: skip
    return {"params": params, "attn_mlp_params": blocks, "baseline_mem_gib": baseline, "results": results}


def run_worker(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"  # a file, not stdout: libraries print to stdout too
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def merge_rounds(runs: list[dict]) -> dict:
    """One result from several worker runs of the same model: medians over all repetitions, peak of peaks."""
    out = {**runs[0], "results": []}
    for per_batch in zip(*(r["results"] for r in runs)):
        merged = {**per_batch[0], "decode_all": [x for r in per_batch for x in r["decode_all"]],
                  "ttft_all": [x for r in per_batch for x in r["ttft_all"]],
                  "peak_mem_gib": max(r["peak_mem_gib"] for r in per_batch)}  # fmt: skip
        merged.update(reps=len(merged["decode_all"]), decode_tokens_per_s=statistics.median(merged["decode_all"]),
                      ttft_s=statistics.median(merged["ttft_all"]))  # fmt: skip
        out["results"].append(merged)
    out["baseline_mem_gib"] = max(r["baseline_mem_gib"] for r in runs)
    return out


def rows_for(args, spec: dict, res: dict, dense: dict, plan) -> list[dict]:
    from numprune.eval.speed import limit_speedup
    from numprune.provenance import library_versions
    from numprune.results import git_commit

    base = {"experiment": "speed", "model": args.config or args.model, "method": "dense" if not spec["ratio"] else
            ("numerical" if plan is not None else "random-shapes"), "ratio": spec["ratio"], "ratio_of": "params",
            "seed": args.seed, "eval_dataset": "random-prompt", "eval_source": "torch.randint",
            "eval_seqlen": args.prompt_len, "git_commit": git_commit(), "versions": library_versions(),
            "params_after": res["params"], "params_before": dense["params"],
            "ratio_achieved": 1 - res["attn_mlp_params"] / dense["attn_mlp_params"]}  # fmt: skip
    if plan is not None:
        ach = plan.achieved
        base.update(heads_pruned=ach["heads_pruned"],
                    kv_heads_pruned=ach["kv_heads_pruned"], channels_pruned=ach["channels_pruned"],
                    calib_dataset=plan.calibration.get("dataset"), calib_source=plan.calibration.get("source"),
                    calib_nsamples=plan.calibration["nsamples"], calib_seqlen=plan.calibration["seqlen"])  # fmt: skip
    rows = []
    for r, d in zip(res["results"], dense["results"]):
        opts = {"batch": r["batch"], "round_to": spec["round_to"], "device": spec["device"], "dtype": spec["dtype"],
                "prompt_len": r["prompt_len"], "new_tokens": r["new_tokens"], "reps": r["reps"],
                "threads": spec["threads"], "mem_kind": r["mem_kind"], "host": host()}  # fmt: skip
        limit = limit_speedup(d["bytes_per_token"], r["bytes_per_token"])
        speedup = r["decode_tokens_per_s"] / d["decode_tokens_per_s"]
        metrics = {"ttft_s": r["ttft_s"], "decode_tokens_per_s": r["decode_tokens_per_s"],
                   "decode_tokens_per_s_min": min(r["decode_all"]), "decode_tokens_per_s_max": max(r["decode_all"]),
                   "peak_mem_gib": r["peak_mem_gib"], "baseline_mem_gib": res["baseline_mem_gib"],
                   "weights_gib": r["weights_gib"], "bytes_per_token": r["bytes_per_token"],
                   "speedup": speedup, "limit_speedup": limit, "speedup_over_limit": speedup / limit}  # fmt: skip
        rows += [{**base, "metric": k, "value": v, "options": opts} for k, v in metrics.items()]
    return rows


def replace_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` into the CSV, dropping older rows with the same key (atomic, like ``append_rows``)."""
    from numprune.results import append_rows, read_rows, row_key

    new_keys = {row_key(r) for r in rows}
    kept = [r for r in read_rows(path) if row_key(r) not in new_keys]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".csv")
    os.close(fd)
    os.unlink(tmp)
    append_rows(tmp, kept + rows)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--model", default="smollm2", help="real model to prune with prune_ (alias, hub id or dir)")
    p.add_argument("--config", default=None, help="random-weights shape instead of --model: llama-7b or tiny")
    p.add_argument("--ratios", default="0,0.2,0.5")
    p.add_argument(
        "--head-scaling",
        default="alpha",
        choices=["alpha", "none", "split"],
        help="results/ rows: alpha, the default before issue 13's split",
    )
    p.add_argument("--round-to", default="1,64", help="kept-MLP-width multiples to compare (1 = no rounding)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp32 on CPU, bf16 on GPU")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per worker run (after one warm-up)")
    p.add_argument("--rounds", type=int, default=1, help="worker runs per model, interleaved across models")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-file", default=str(DEFAULT_CALIB))
    p.add_argument("--calib-nsamples", type=int, default=8)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "numprune-bench"))
    p.add_argument("--out", default="results/speed.csv")
    p.add_argument("--png", default="results/speed.png")
    args = p.parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.worker))))
        return
    torch.set_num_threads(args.threads)
    from numprune.eval.speed import plot_speed
    from numprune.hub import resolve
    from numprune.save import load_plan

    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.config == "llama-7b" and not args.device.startswith("cuda"):
        sys.exit("--config llama-7b needs a GPU (--device cuda); it is 13-27 GB of weights")
    ratios = [float(x) for x in args.ratios.split(",")]
    round_tos = [int(x) for x in args.round_to.split(",")]
    common = {"device": args.device, "dtype": dtype, "threads": args.threads, "seed": args.seed,
              "batches": [int(x) for x in args.batches.split(",")], "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "reps": args.reps, "config": args.config}  # fmt: skip
    specs = [{**common, "ratio": r, "round_to": k} for r in ratios for k in round_tos if r > 0 or k == round_tos[0]]
    if 0.0 not in ratios:
        specs.insert(0, {**common, "ratio": 0.0, "round_to": round_tos[0]})
    specs.sort(key=lambda s: s["ratio"])  # the dense model first: it is every row's reference
    plans = []
    for spec in specs:
        if not args.config:
            spec["path"] = (
                str(prepare_pruned(args, spec["ratio"], spec["round_to"])) if spec["ratio"] else resolve(args.model)
            )
        plans.append(load_plan(spec["path"]) if spec.get("path") and spec["ratio"] else None)
    # Rounds interleave the models, so load from other processes on a shared machine hits them all alike.
    per_spec: list[list[dict]] = [[] for _ in specs]
    for rnd in range(args.rounds):
        for spec, acc in zip(specs, per_spec):
            acc.append(run_worker(spec))
            tps = [round(r["decode_tokens_per_s"], 1) for r in acc[-1]["results"]]
            print(f"round {rnd} ratio={spec['ratio']} round_to={spec['round_to']}: tokens/s {tps}", file=sys.stderr)
    results = [merge_rounds(runs) for runs in per_spec]
    rows = [row for s, r, pl in zip(specs, results, plans) for row in rows_for(args, s, r, results[0], pl)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_rows(out, rows)
    print(f"wrote {len(rows)} rows to {out}; plot: {plot_speed(out, args.png)}", file=sys.stderr)


if __name__ == "__main__":
    main()
