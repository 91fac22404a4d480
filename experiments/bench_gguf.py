"""Pruned SmolLM2 in llama.cpp: perplexity next to numprune's own evaluation, and llama-bench speed ratios.

Writes results/gguf.csv and results/gguf.png (docs/gguf.md shows the table). One core, ~30 min:

    NUMPRUNE_LLAMA_CPP=/path/to/llama.cpp/build/bin PYTHONPATH=. python experiments/bench_gguf.py \
        --work-dir /tmp/numprune-gguf --ratios 0.1,0.2,0.3,0.4,0.5 --chunks 16 --reps 3

1. The runner (``numprune.runner``, numprune defaults, 32 x 256 WikiText-2 validation calibration windows)
   prunes SmolLM2 at each ratio and saves the folders under ``--work-dir`` (not in the repository).
2. ``export_gguf`` writes each folder (and the dense model) in f32, f16 and q8_0.
3. Perplexity on the first ``--text-bytes`` bytes of WikiText-2 test (raw, CRLF kept, the same bytes for both):
   ``llama-perplexity`` on the f32 file and ``numprune.eval.perplexity.llamacpp_perplexity`` on the HF folder
   (windows of ``--n-ctx`` tokens, second half scored: llama.cpp's protocol).
4. One ``llama-bench`` run per dtype over all models (same threads, same process, ``--reps`` repetitions):
   prompt (pp) and generation (tg) tokens/s, the ratio pruned/dense, and beside it the bytes-ratio limit
   (dense file bytes / pruned file bytes: the speed-up if every token reads all weights once).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import torch

from numprune.eval.llamacpp import llama_bench, llama_perplexity
from numprune.eval.perplexity import llamacpp_perplexity
from numprune.export import export_gguf
from numprune.hub import load_model, smollm2_path
from numprune.points import text_point
from numprune.provenance import library_versions
from numprune.results import append_rows, git_commit, plan_columns, portable, read_rows
from numprune.runner import Runner
from numprune.save import load_plan

LLAMA_CPP_SOURCE = "llama-cpp-python==0.3.36 sdist (vendor/llama.cpp), cmake -DGGML_NATIVE=ON"


def host() -> str:
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")]
    return names[0] if names else platform.machine()


def prune_folders(work: Path, ratios: list[float], head_scaling: str | None = None) -> dict[float, Path]:
    """Prune with the one runner (saves each model) and return ratio -> folder (0: the dense SmolLM2)."""
    opts = {} if head_scaling is None else {"head_scaling": head_scaling}
    points = [text_point("gguf", ratio=r, options=opts) for r in ratios]
    runner = Runner(work / "prune.csv", save_models=True)
    runner.run(points)  # skips points whose rows exist (a rerun reuses the saved folders)
    folders = {0.0: smollm2_path()}
    for p in points:
        folder = runner.model_dir(p)
        assert folder is not None and (folder / "config.json").exists(), folder
        folders[p.ratio] = folder
    return folders


def base_row(ratio: float, folder: Path) -> dict:
    plan = load_plan(folder)
    row = {"experiment": "gguf", "model": "smollm2", "method": "dense", "ratio": 0.0, "ratio_of": "params", "seed": 0}
    if plan is not None:
        row.update(plan_columns(plan))
    versions = {**library_versions(), "gguf": _version("gguf"), "llama.cpp": LLAMA_CPP_SOURCE}
    return {**row, "versions": versions, "git_commit": git_commit()}


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5")
    p.add_argument(
        "--head-scaling",
        default=None,
        choices=["alpha", "none", "split"],
        help="default: numerical's (split); results/gguf_alpha.csv was measured with alpha",
    )
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "numprune-gguf"))
    p.add_argument("--text", default=None, help="default: $NUMPRUNE_DATA_DIR/wikitext2/wiki.test.raw")
    p.add_argument("--text-bytes", type=int, default=80000)
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--bench-dtypes", default="f16,q8_0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n-prompt", type=int, default=128)
    p.add_argument("--n-gen", type=int, default=32)
    p.add_argument("--out", default="results/gguf.csv")
    p.add_argument("--png", default="results/gguf.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    ratios = [float(r) for r in args.ratios.split(",")]
    folders = prune_folders(work, ratios, args.head_scaling)

    source = Path(args.text or Path(os.environ.get("NUMPRUNE_DATA_DIR", "../shared/data")) / "wikitext2/wiki.test.raw")
    text = source.read_bytes()[: args.text_bytes].decode("utf-8", errors="ignore")
    text_file = work / "text.raw"
    text_file.write_bytes(text.encode("utf-8"))
    dtypes = ["f32", *args.bench_dtypes.split(",")]
    files: dict[tuple[float, str], Path] = {}
    sizes: dict[tuple[float, str], int] = {}
    types: dict[tuple[float, str], dict] = {}
    rows: list[dict] = []
    for ratio, folder in folders.items():
        model, tok = load_model(str(folder))
        for d in dtypes:
            files[ratio, d] = work / "gguf" / f"smollm2-{ratio:g}-{d}.gguf"
            summary = export_gguf(model, files[ratio, d], dtype=d, tokenizer=folder)
            sizes[ratio, d], types[ratio, d] = summary["bytes"], summary["tensor_types"]
        ours = llamacpp_perplexity(model, tok, text, args.n_ctx, args.chunks)
        theirs = llama_perplexity(files[ratio, "f32"], text_file, args.n_ctx, args.chunks, threads=args.threads)
        base = base_row(ratio, folder)
        ppl = {
            **base,
            "eval_dataset": f"wikitext2:test-raw-first-{args.text_bytes}-bytes",
            "eval_source": portable(source),
            "eval_seqlen": args.n_ctx,
            "eval_windows": theirs["chunks"],
        }
        ppl["options"] = {
            **(base.get("options") or {}),
            "protocol": "llama-perplexity (second half of each window)",
            "export_dtype": "f32",
            "architecture": summary["architecture"],
        }
        for metric, value in (("ppl_llamacpp", theirs["ppl"]), ("ppl_numprune", ours["ppl"]),
                              ("ppl_rel_diff", theirs["ppl"] / ours["ppl"] - 1)):  # fmt: skip
            rows.append({**ppl, "metric": metric, "value": value})
        print(f"ratio {ratio:g}: ppl llama.cpp {theirs['ppl']:.4f} numprune {ours['ppl']:.4f}", flush=True)
        del model

    for d in args.bench_dtypes.split(","):
        records = llama_bench([files[r, d] for r in folders], args.threads, args.reps, args.n_prompt, args.n_gen)
        speed = {(Path(rec["model_filename"]).name, "pp" if rec["n_gen"] == 0 else "tg"): rec for rec in records}
        for ratio, folder in folders.items():
            base = base_row(ratio, folder)
            opts = {
                **(base.get("options") or {}),
                "export_dtype": d,
                "threads": args.threads,
                "reps": args.reps,
                "n_prompt": args.n_prompt,
                "n_gen": args.n_gen,
                "host": host(),
                "tensor_types": types[ratio, d],
            }
            limit = sizes[0.0, d] / sizes[ratio, d]
            row = {**base, "eval_dataset": "llama-bench", "options": opts}
            rows.append({**row, "metric": "file_bytes", "value": sizes[ratio, d]})
            rows.append({**row, "metric": "bytes_ratio_limit", "value": limit})
            for kind in ("pp", "tg"):
                rec, dense = speed[files[ratio, d].name, kind], speed[files[0.0, d].name, kind]
                rows.append({**row, "metric": f"{kind}_tokens_per_s", "value": rec["avg_ts"]})
                rows.append({**row, "metric": f"{kind}_tokens_per_s_std", "value": rec["stddev_ts"]})
                rows.append({**row, "metric": f"{kind}_speedup", "value": rec["avg_ts"] / dense["avg_ts"]})
                print(f"{d} ratio {ratio:g} {kind}: {rec['avg_ts']:.1f} tok/s, x{rec['avg_ts'] / dense['avg_ts']:.2f} "
                      f"(bytes limit x{limit:.2f})", flush=True)  # fmt: skip
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.new")
    tmp.unlink(missing_ok=True)
    append_rows(tmp, rows)
    os.replace(tmp, out)
    plot(out, Path(args.png))
    print(markdown_table(out))
    print(f"wrote {out} ({len(read_rows(out))} rows) and {args.png}")


def markdown_table(csv_path: Path) -> str:
    """The table of docs/gguf.md: one line per ratio, perplexities and speed ratios with their byte limits."""
    import json

    rows = read_rows(csv_path)
    cell: dict[tuple[float, str, str], float] = {}
    for r in rows:
        d = json.loads(r["options"] or "{}").get("export_dtype", "")
        cell[float(r["ratio"]), r["metric"], d] = float(r["value"])
    dts = sorted({d for (_, m, d) in cell if m == "tg_speedup"})
    head = ["ratio", "ppl llama.cpp (f32)", "ppl numprune", "rel. diff"]
    for d in dts:
        head += [f"{d} pp x", f"{d} tg x", f"{d} bytes limit x"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ratio in sorted({k[0] for k in cell}):
        vals = [f"{ratio:g}", f"{cell[ratio, 'ppl_llamacpp', 'f32']:.4f}", f"{cell[ratio, 'ppl_numprune', 'f32']:.4f}",
                f"{cell[ratio, 'ppl_rel_diff', 'f32']:+.1e}"]  # fmt: skip
        for d in dts:
            vals += [f"{cell[ratio, m, d]:.2f}" for m in ("pp_speedup", "tg_speedup", "bytes_ratio_limit")]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(csv_path: Path, png: Path) -> None:
    """Left: perplexity vs ratio (llama.cpp f32 and numprune, same protocol); right: pruned/dense tokens/s of
    llama-bench (pp, tg; f16, q8_0) with the bytes-ratio limit of each dtype."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(csv_path)

    def series(metric: str, dtype: str | None = None) -> tuple[list[float], list[float]]:
        pts = sorted((float(r["ratio"]), float(r["value"])) for r in rows if r["metric"] == metric
                     and (dtype is None or json.loads(r["options"] or "{}").get("export_dtype") == dtype))  # fmt: skip
        return [x for x, _ in pts], [y for _, y in pts]

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(*series("ppl_llamacpp"), "o-", label="llama.cpp (f32 GGUF)")
    a.plot(*series("ppl_numprune"), "x--", label="numprune, same protocol")
    a.set(xlabel="pruning ratio", ylabel="perplexity (WikiText-2 test)", yscale="log", title="perplexity")
    a.legend()
    dts = sorted({json.loads(r["options"] or "{}").get("export_dtype") for r in rows if r["metric"] == "tg_speedup"})
    for d, color in zip(dts, ("C0", "C1", "C2")):
        b.plot(*series("tg_speedup", d), "o-", color=color, label=f"{d} generation")
        b.plot(*series("pp_speedup", d), "s:", color=color, label=f"{d} prompt")
        b.plot(*series("bytes_ratio_limit", d), "--", color=color, alpha=0.5, label=f"{d} bytes-ratio limit")
    b.axhline(1, color="grey", lw=0.5)
    b.set(xlabel="pruning ratio", ylabel="tokens/s pruned / dense", title="llama-bench, 1 thread")
    b.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    for r in rows:
        if r["metric"] in ("ppl_llamacpp", "ppl_numprune", "tg_speedup", "pp_speedup", "bytes_ratio_limit"):
            print(r["ratio"], r["metric"], json.loads(r["options"] or "{}").get("export_dtype"), r["value"])


if __name__ == "__main__":
    main()
