"""Generation speed and memory of a dense vs pruned LlamaGen (random weights: speed does not depend on them).

    PYTHONPATH=. python experiments/bench_llamagen_gpu.py                 # GPU: GPT-XXL shape, bf16
    PYTHONPATH=. python experiments/bench_llamagen_gpu.py --tiny          # CPU check: tiny config, fp32

Prunes a randomly initialised LlamaGen-XXL-shaped model with ``prune_`` (calibration: random teacher-forced
rows ``[class, tokens...]``) at each ratio, then times CFG generation of a full 24x24 token grid (KV cache,
the paper's sampling settings) and records images/s, tokens/s and peak memory in ``results/llamagen_speed.csv``.
VQ decoding is excluded unless ``--decode`` (it is not pruned and costs the same for every variant).
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import torch

from numprune import prune_
from numprune.llamagen.config import GPTConfig, gpt_config
from numprune.llamagen.gpt import build_gpt
from numprune.llamagen.sampling import generate_tokens
from numprune.llamagen.vq import VQConfig, VQModel
from numprune.results import append_rows, git_commit

TINY = dict(dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=10, block_size=16, multiple_of=16)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="GPT-XXL")
    p.add_argument("--tiny", action="store_true", help="tiny config on CPU (a smoke test of this script)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    p.add_argument("--batch-size", type=int, default=16, help="images per generate call (x2 rows with CFG)")
    p.add_argument("--cfg-scale", type=float, default=1.75)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--decode", action="store_true", help="include VQ-16 decoding in the timing")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/llamagen_speed.csv")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (CPU runs)


def measure(model, vq: VQModel | None, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median-free simple timing: one warm-up call, then ``repeats`` timed calls of ``batch_size`` images."""
    classes = torch.arange(args.batch_size) % model.config.num_classes
    generate_tokens(model, classes, cfg_scale=args.cfg_scale, num_tokens=4, seed=args.seed)  # warm-up
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for r in range(args.repeats):
        toks = generate_tokens(model, classes, cfg_scale=args.cfg_scale, seed=args.seed + r)
        if vq is not None:
            with torch.no_grad():
                vq.decode_code(toks)
    _sync(device)
    seconds = (time.perf_counter() - start) / args.repeats
    n_tok = model.config.block_size * args.batch_size
    return {
        "images_per_s": args.batch_size / seconds,
        "tokens_per_s": n_tok / seconds,
        "seconds_per_batch": seconds,
        "peak_memory_gib": _peak_gib(device),
        "weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = GPTConfig(**TINY) if args.tiny else gpt_config(args.model)
    name = "tiny" if args.tiny else args.model
    dense = build_gpt(cfg, device=device, dtype=dtype, seed=args.seed).eval()
    vq = None
    if args.decode:
        vq_cfg = VQConfig(ch=32, ch_mult=[1, 1], z_channels=32, usage_buffer=0) if args.tiny else VQConfig()
        vq = VQModel(vq_cfg).to(device).eval()
    g = torch.Generator().manual_seed(args.seed)
    calib = torch.cat(
        [
            torch.randint(0, cfg.num_classes, (args.calib_samples, 1), generator=g),
            torch.randint(0, cfg.vocab_size, (args.calib_samples, cfg.block_size - 1), generator=g),
        ],
        1,
    )
    base = {
        "experiment": "llamagen_speed",
        "model": f"LlamaGen-{name}(random-init)",
        "seed": args.seed,
        "calib_dataset": "random-tokens",
        "calib_nsamples": args.calib_samples,
        "calib_seqlen": cfg.block_size,
        "eval_dataset": "generation",
        "eval_seqlen": cfg.cls_token_num + cfg.block_size,
        "git_commit": git_commit(),
        "versions": {"torch": torch.__version__},
    }
    opts = {
        "batch_size": args.batch_size,
        "cfg_scale": args.cfg_scale,
        "dtype": str(dtype),
        "device": device.type,
        "decode": args.decode,
        "kv_cache": True,
        "repeats": args.repeats,
    }
    params = sum(p.numel() for p in dense.parameters())
    out_rows = []

    def record(method: str, ratio: float, m: dict[str, float], extra: dict) -> None:
        for metric, value in m.items():
            out_rows.append(
                {
                    **base,
                    "method": method,
                    "ratio": ratio,
                    "metric": metric,
                    "value": f"{value:.6g}",
                    "options": opts,
                    **extra,
                }
            )
        print(f"{method:>10} {ratio:.2f}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()), flush=True)

    record("dense", 0.0, measure(dense, vq, args, device), {"params_before": params, "params_after": params})
    for ratio in args.ratios:
        model = copy.deepcopy(dense)
        plan = prune_(model, ratio=ratio, calibration=calib, progress=False)
        a = plan.achieved
        record(
            "numerical",
            ratio,
            measure(model, vq, args, device),
            {
                "ratio_of": "params",
                "ratio_achieved": a["params_ratio"],
                "params_before": a["model_params_before"],
                "params_after": a["model_params_after"],
                "heads_pruned": a["heads_pruned"],
                "channels_pruned": a["channels_pruned"],
            },
        )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    append_rows(args.out, out_rows)
    return out_rows


if __name__ == "__main__":
    main()
