"""Pruning cost: time per stage and peak memory vs model shape and calibration size; results/cost.csv.

Seconds are CPU seconds of the worker process on the CPU (``time.process_time``, 1 thread: the time other
processes of a shared machine take does not count; wall seconds are in ``*_wall_seconds`` rows) and wall
seconds on a GPU. Every number is also a ratio to two references measured in the same worker process, on the
same samples:
``forward`` (one layer-by-layer forward of the dense model, no statistics) and ``dense pass`` (the pipeline's
dense calibration pass: forwards plus the Gram matrices, ``numprune.dense_statistics``). The machine is
shared and noisy; the ratios are what carries over.

Shapes: the real SmolLM2-135M, and random weights with the LLaMA-3.2-1B, LLaMA-3.2-3B and LLaMA-7B shapes
(cost depends on shapes, not values; rows say ``weights: random``). ``--layers K`` builds only the first K
decoder layers of a shape (rows record ``layers_built`` and ``layers_full``: per-layer cost is what scales).
``--before-tree DIR`` runs the same grid with the code checked out in DIR too (``code: before``), in the same
run, for a before/after comparison.

The grid of docs/cost.md (1 thread, ~25 core-minutes; PYTHONPATH=. and /work/helpers/heavy on the shared box):

    python experiments/bench_cost.py --model smollm2 --nsamples 32 --seqlen 256 --before-tree ../cost-before
    python experiments/bench_cost.py --model smollm2 --layers 4 --nsamples 8,32,128 --seqlen 256
    python experiments/bench_cost.py --model smollm2 --layers 4 --nsamples 8 --seqlen 128,512,2048
    python experiments/bench_cost.py --model llama-3.2-1b,llama-3.2-3b,llama-7b --layers 1 --nsamples 8 \
        --seqlen 256 --dtype bf16
    python experiments/report_cost.py        # tables, fits and results/cost.png
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# LLaMA-3.2 configs (meta-llama/Llama-3.2-{1B,3B}/config.json) and LLaMA-7B (Touvron et al. 2023).
SHAPES: dict[str, dict] = {
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "llama-3.2-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "llama-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, head_dim=128, tie_word_embeddings=False),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def host() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
    return names[0] if names else platform.machine()


def build(spec: dict):
    """The model (first ``layers`` decoder layers only, when given), its calibration and how both were made."""
    from numprune.adapters import get_adapter

    dtype = DTYPES[spec["dtype"]]
    if spec["model"] == "smollm2":
        from numprune.data import calibration_windows, load_corpus
        from numprune.hub import load_model

        model, tok = load_model("smollm2", dtype=dtype)
        corpus = load_corpus("wikitext2:validation")
        calib = calibration_windows(corpus, tok, spec["nsamples"], spec["seqlen"], seed=0)
        info = {"dataset": "wikitext2:validation", "source": corpus.source, "seed": 0}
        weights = "real"
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(**SHAPES[spec["model"]], max_position_embeddings=4096)
        cfg.num_hidden_layers = spec["layers"] or cfg.num_hidden_layers
        torch.manual_seed(0)
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built in its dtype: a 7B shape in fp32 first would need twice the RAM
        try:
            model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(old)
        gen = torch.Generator().manual_seed(0)
        calib = torch.randint(0, cfg.vocab_size, (spec["nsamples"], spec["seqlen"]), generator=gen)
        info = {"dataset": "random-tokens", "source": "torch.randint", "seed": 0}
        weights = "random"
    adapter = get_adapter(model)
    full = len(adapter.layers(model)) if weights == "real" else SHAPES[spec["model"]]["num_hidden_layers"]
    if spec["layers"] and weights == "real" and spec["layers"] < full:
        adapter.remove_layers_(model, list(range(spec["layers"], full)))
    model.eval()  # stays in CPU memory: the pipeline moves one layer at a time to spec["device"]
    return model, calib, info, {"weights": weights, "layers_full": full, "layers_built": len(adapter.layers(model))}


def _rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) where the kernel allows it
    except OSError:
        pass


def _status_gib(field: str) -> float:
    """A memory field of ``/proc/self/status`` in GiB (``VmHWM``: peak RSS since the last reset; ``VmRSS``: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _rss_peak() -> float:
    return _status_gib("VmHWM")


def _rss_now() -> float:
    """The current RSS: the baseline of a prune's peak. Not the peak so far, which includes transients of
    building the model (weights initialised in float32 before the cast to bf16: +0.5-0.7 GiB at the LLaMA-3.2
    shapes)."""
    return _status_gib("VmRSS")


def _device_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _device_peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def clock_for(device: torch.device):
    """CPU time of this process on the CPU (1 thread: what other processes on a shared machine do not change);
    wall time on a GPU."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def _timed(fn, device: torch.device) -> tuple[float, float, float, float]:
    """(seconds on ``clock_for(device)``, peak RSS GiB, peak device GiB, wall seconds) of ``fn()``."""
    _rss_reset()
    _device_reset(device)
    clock = clock_for(device)
    t0, w0 = clock(), time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - t0, _rss_peak(), _device_peak(device), time.perf_counter() - w0


def worker(spec: dict) -> dict:
    """In a fresh process: the two reference passes, then one prune (+ save) per compensation mode."""
    from numprune import prune_, save_pruned
    from numprune.adapters import get_adapter
    from numprune.calibrate import LayerwiseRunner
    from numprune.passes import dense_statistics

    try:
        from numprune.timing import StageTimer
    except ImportError:  # the code before numprune.timing (``code: before``): totals only
        StageTimer = None  # type: ignore[assignment]
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dense, calib, info, built = build(spec)
    adapter = get_adapter(dense)
    base_rss = _rss_now()

    def forward_pass() -> None:
        LayerwiseRunner(dense, adapter, calib, device, progress=False).walk(lambda i, layer: None, desc="")

    forward = _timed(forward_pass, device)
    dense_pass = _timed(lambda: dense_statistics(dense, calib, device=spec["device"]), device)
    out = {**built, "info": info, "baseline_rss_gib": base_rss, "forward": forward, "dense_pass": dense_pass,
           "params": sum(p.numel() for p in dense.parameters()), "prunes": []}  # fmt: skip
    for comp in spec["compensations"]:
        model = copy.deepcopy(dense)
        timer = StageTimer(clock=clock_for(device)) if StageTimer is not None else None
        holder: dict = {}

        def run(model=model, comp=comp, timer=timer, holder=holder) -> None:
            kw = dict(ratio=spec["ratio"], calibration=calib, calibration_info=info, compensation=comp, progress=False)
            kw.update(device=spec["device"], head_scaling=spec.get("head_scaling", "alpha"))
            if timer is None:
                holder["plan"] = prune_(model, **kw)
                return
            with timer:
                holder["plan"] = prune_(model, **kw)

        seconds, rss, dev, wall = _timed(run, device)
        plan = holder["plan"]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            if timer is None:
                save_pruned(model, Path(tmp) / "m", plan)
            else:
                with timer:
                    save_pruned(model, Path(tmp) / "m", plan)
            save = time.perf_counter() - t0  # wall: writing files is I/O
        stages = dict(timer.seconds) if timer is not None else {}
        out["prunes"].append({"compensation": comp, "prune_s": seconds, "wall_s": wall, "save_s": save,
                              "peak_rss_gib": rss, "peak_device_gib": dev, "stages": stages, "achieved": plan.achieved,
                              "options": plan.options})  # fmt: skip
        del model
    return out


def run_worker(spec: dict, tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(spec["threads"])}
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", str(res)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not res.exists():
            raise RuntimeError(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
        return json.loads(res.read_text())


def rows_for(spec: dict, res: dict, code: str, commit: str) -> list[dict]:
    from numprune.provenance import library_versions

    fwd, dpass = res["forward"][0], res["dense_pass"][0]
    rows = []
    for p in res["prunes"]:
        opts = {**p["options"], "device": spec["device"], "dtype": spec["dtype"], "threads": spec["threads"],
                "weights": res["weights"], "layers_built": res["layers_built"], "layers_full": res["layers_full"],
                "code": code, "host": host()}  # fmt: skip
        metrics = {"prune_seconds": p["prune_s"], "prune_wall_seconds": p["wall_s"], "save_wall_seconds": p["save_s"],
                   "forward_seconds": fwd, "forward_wall_seconds": res["forward"][3],
                   "dense_pass_wall_seconds": res["dense_pass"][3],
                   "dense_pass_seconds": dpass, "prune_over_dense_pass": p["prune_s"] / dpass,
                   "prune_over_forward": p["prune_s"] / fwd, "dense_pass_over_forward": dpass / fwd,
                   "peak_rss_gib": p["peak_rss_gib"], "baseline_rss_gib": res["baseline_rss_gib"],
                   "dense_pass_peak_rss_gib": res["dense_pass"][1]}  # fmt: skip
        if spec["device"] != "cpu":
            metrics.update(peak_device_gib=p["peak_device_gib"], dense_pass_peak_device_gib=res["dense_pass"][2])
        for name, s in p["stages"].items():
            metrics[f"stage_{name}_seconds"] = s
            metrics[f"stage_{name}_over_dense_pass"] = s / dpass
        base = {"experiment": "cost", "model": spec["model"], "method": "numerical", "ratio": spec["ratio"],
                "ratio_of": "params", "ratio_achieved": p["achieved"]["params_ratio"], "seed": 0,
                "calib_dataset": res["info"]["dataset"], "calib_source": res["info"]["source"],
                "calib_nsamples": spec["nsamples"], "calib_seqlen": spec["seqlen"],
                "params_before": p["achieved"]["model_params_before"],
                "params_after": p["achieved"]["model_params_after"], "options": opts,
                "versions": library_versions(), "git_commit": commit}  # fmt: skip
        rows += [{**base, "metric": k, "value": v} for k, v in metrics.items()]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="comma list: smollm2, " + ", ".join(SHAPES))
    p.add_argument("--layers", type=int, default=None, help="build only the first K decoder layers")
    p.add_argument("--nsamples", default="32")
    p.add_argument("--seqlen", default="256")
    p.add_argument("--compensation", default="sequential,dense")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument(
        "--head-scaling",
        default="alpha",
        choices=["alpha", "none", "split"],
        help="results/ rows: alpha, the default before issue 13's split",
    )
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--before-tree", default=None, help="also run the grid with the code in this checkout")
    p.add_argument("--out", default="results/cost.csv")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.worker))))
        return
    from numprune.results import append_rows, git_commit

    here = Path(__file__).resolve().parents[1]
    trees = [("after", here)] + ([("before", Path(args.before_tree).resolve())] if args.before_tree else [])
    grid = [(m, int(n), int(s)) for m in args.model.split(",") for n in args.nsamples.split(",")
            for s in args.seqlen.split(",")]  # fmt: skip
    specs = [{"model": m, "layers": args.layers, "nsamples": n, "seqlen": s, "dtype": args.dtype,
              "device": args.device, "threads": args.threads, "ratio": args.ratio, "head_scaling": args.head_scaling,
              "compensations": args.compensation.split(",")} for m, n, s in grid]  # fmt: skip
    rows = []
    for spec in specs:
        for code, tree in trees:  # interleaved: load from other processes hits before and after alike
            res = run_worker(spec, tree)
            rows += rows_for(spec, res, code, git_commit(tree))
            fwd, dpass = res["forward"][0], res["dense_pass"][0]
            for pr in res["prunes"]:
                print(f"{code} {spec['model']} L={res['layers_built']}/{res['layers_full']} {spec['nsamples']}x"
                      f"{spec['seqlen']} {pr['compensation']}: prune {pr['prune_s']:.1f} s = "
                      f"{pr['prune_s'] / dpass:.2f} dense passes ({dpass:.1f} s) = {pr['prune_s'] / fwd:.2f} "
                      f"forwards ({fwd:.1f} s); peak RSS {pr['peak_rss_gib']:.2f} GiB; stages "
                      + ", ".join(f"{k} {v:.1f}" for k, v in sorted(pr["stages"].items())), flush=True)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    append_rows(out, rows, replace=True)  # a re-measurement replaces its rows
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
