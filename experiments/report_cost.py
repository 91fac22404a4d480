"""Tables, growth fits and the figure of the pruning cost benchmark, from the result CSVs alone.

    PYTHONPATH=. python experiments/report_cost.py cost [--csv results/cost.csv] [--png results/cost.png]
    PYTHONPATH=. python experiments/report_cost.py speed results/speed.csv ...   # decode rows vs the limit

Growth model fitted per stage (one constant each, least squares through the origin over all rows):
token-proportional stages (forward, gram, sequential_forward) cost ``c * layers * tokens * P`` with ``P`` the
layer's attention+MLP parameters (gram: ``hidden^2 + intermediate^2``; capture: ``c * tokens * hidden``, once);
the solves (score, repair)
cost ``c * layers * (hidden^3 + intermediate^3)``, whatever the number of tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

# hidden, intermediate, heads, kv heads, head_dim, layers
GEOMETRY = {
    "smollm2": (576, 1536, 9, 3, 64, 30),
    "tiny": (64, 176, 4, 2, 16, 2),
    "llama-3.2-1b": (2048, 8192, 32, 8, 64, 16),
    "llama-3.2-3b": (3072, 8192, 24, 8, 128, 28),
    "llama-7b": (4096, 11008, 32, 32, 128, 32),
    "llama-2-70b": (8192, 28672, 64, 8, 128, 80),
}
TOKEN_STAGES = ("capture", "forward", "gram", "sequential_forward")
SOLVE_STAGES = ("score", "repair")
KEYS = [
    "model",
    "layers_built",
    "layers_full",
    "calib_nsamples",
    "calib_seqlen",
    "dtype",
    "device",
    "ratio",
    "head_scaling",
    "code",
    "comp",
]


def layer_params(model: str) -> int:
    h, i, nh, kv, hd, _ = GEOMETRY[model]
    return 2 * h * nh * hd + 2 * h * kv * hd + 3 * h * i


def work(model: str, stage: str, tokens: int) -> float:
    """The per-layer work a stage's constant multiplies."""
    h, i = GEOMETRY[model][:2]
    if stage == "capture":  # the embedding lookup, once for the model
        return float(tokens * h)
    if stage == "gram":
        return tokens * (h * h + i * i)
    if stage in TOKEN_STAGES:
        return tokens * layer_params(model)
    return float(h**3 + i**3)


def working_memory_gib(
    model: str, layers: int, tokens: int, dtype_bytes: int, comp: str, ratio: float, params: int, cache_gib: float = 4.0
) -> dict[str, float]:
    """The memory model of docs/distributed.md for one prune, by part (GiB), at the larger of its two peaks.

    Scoring, in the dense pass: the hidden states in and out of the current layer, its Gram matrices (float64)
    and the score's solve, two ``intermediate^2`` float64 matrices (``A`` and its Cholesky factor; the split
    curve's permuted Gram and its factor, then ``L^{-1}`` and ``P``) and a float64 copy of ``down_proj``'s
    weight. Repair: the refit's kept block ``G_KK`` and its factor (``2 K^2`` float64, ``K`` the kept
    channels); in the sequential pass with its larger activations (the outputs with ``down_proj`` bypassed and
    its kept input columns) and ``down_proj``'s kept Gram rows only. Both: the pruned copy of the weights, and
    the dense statistics of the other layers when compensation=dense keeps them (up to ``cache_gib``). On the
    CPU: the model of a CPU row's peak RSS (``report_cost.py cost`` compares them)."""
    h, i = GEOMETRY[model][:2]
    kept = round(i * (1 - ratio))
    gram = (h * h + i * i) * 8
    # the cached statistics of the other layers (on the CPU the current layer's are the cached tensors)
    cache = (layers - 1) * gram if comp == "dense" and layers * gram <= cache_gib * 2**30 else 0
    dense_acts = 2 * tokens * h * dtype_bytes  # hidden states in and out of the current layer
    scoring = {"activations": dense_acts, "gram": gram, "solve": (2 * i * i + h * i) * 8}
    if comp == "sequential":
        acts = dense_acts + tokens * h * dtype_bytes + tokens * kept * dtype_bytes
        repair = {"activations": acts, "gram": (h * h + kept * i) * 8, "solve": 2 * kept * kept * 8}
    else:
        repair = {"activations": dense_acts, "gram": gram, "solve": 2 * kept * kept * 8}  # from the cache
    peak = max(scoring, repair, key=lambda parts: sum(parts.values()))
    parts = {"weights": params * dtype_bytes, **peak, "stats_cache": cache}
    out = {k: v / 2**30 for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def load(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    df = df[df.experiment == "cost"].copy()
    opts = df.options.map(json.loads)
    for key in ("layers_built", "layers_full", "dtype", "device", "code", "weights", "head_scaling"):
        df[key] = opts.map(lambda o, k=key: o.get(k))
    df["comp"] = opts.map(lambda o: o.get("compensation"))
    df["value"] = df.value.astype(float)
    return df


def wide(df: pd.DataFrame) -> pd.DataFrame:
    w = df.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="last")
    return w.join(df.groupby(KEYS).params_before.first()).reset_index()


def fits(w: pd.DataFrame) -> dict[str, float]:
    """Per stage: seconds per unit of ``work`` (after-code rows)."""
    w = w[w.code == "after"]
    out = {}
    for stage in TOKEN_STAGES + SOLVE_STAGES:
        col = f"stage_{stage}_seconds"
        if col not in w:
            continue
        rows = w[w[col].notna()]
        x = [work(m, stage, n * s) * (1 if stage == "capture" else lb)
             for m, n, s, lb in zip(rows.model, rows.calib_nsamples, rows.calib_seqlen, rows.layers_built)]  # fmt: skip
        y = list(rows[col])
        if x:
            out[stage] = sum(a * b for a, b in zip(x, y)) / sum(a * a for a in x)
    return out


def extrapolate(
    c: dict[str, float], model: str, nsamples: int, seqlen: int, comp: str, cache_gib: float = 4.0
) -> dict[str, float]:
    """Seconds per stage for the whole model (every layer) on the machine the constants were fitted on.

    ``comp``: ``sequential``, or ``dense``: dense compensation reuses the dense pass statistics when every
    layer's Gram matrices fit ``cache_gib`` (``stats_cache_gib``), else it runs a second dense pass."""
    h, i = GEOMETRY[model][:2]
    layers, tokens = GEOMETRY[model][5], nsamples * seqlen
    stages = [s for s in TOKEN_STAGES + SOLVE_STAGES if s in c and (comp == "sequential" or s != "sequential_forward")]
    out = {s: c[s] * work(model, s, tokens) * (1 if s == "capture" else layers) for s in stages}
    dense_pass = out["forward"] + out["gram"] + out.get("capture", 0.0)
    repass = comp == "dense" and layers * (h * h + i * i) * 8 > cache_gib * 2**30
    if comp == "sequential" or repass:  # the second pass accumulates the Gram matrices again
        out["gram"] *= 2
    if repass:
        out["forward"] *= 2
    out["total"] = sum(out.values())
    out["total_over_dense_pass"] = out["total"] / dense_pass
    return out


def cost_report(csv: str, png: str | None) -> str:
    df = load(csv)
    w = wide(df)
    out = ["Prune cost per configuration (ratios to one dense calibration pass and to one plain forward, both "
           "measured in the same process)\n"]  # fmt: skip
    cols = ["prune_seconds", "dense_pass_seconds", "forward_seconds", "prune_over_dense_pass", "prune_over_forward",
            "peak_rss_gib"] + [c for c in ("peak_device_gib",) if c in w]  # fmt: skip
    out.append(w[KEYS + cols].round(3).to_markdown(index=False))
    stage_cols = sorted(c for c in w.columns if c.startswith("stage_") and c.endswith("_over_dense_pass"))
    out.append("\nStages as a fraction of one dense calibration pass (after code; stages are exclusive)\n")
    t = w[w.code == "after"][KEYS + stage_cols].rename(columns=lambda c: c.replace("stage_", "")
                                                       .replace("_over_dense_pass", ""))  # fmt: skip
    out.append(t.round(3).to_markdown(index=False))
    before = w[w.code == "before"]
    if len(before):
        out.append("\nBefore / after (same run): prune time in dense passes, and after / before seconds\n")
        j = before.merge(w[w.code == "after"], on=[k for k in KEYS if k != "code"], suffixes=("_before", "_after"))
        j["after_over_before_seconds"] = j.prune_seconds_after / j.prune_seconds_before
        j["after_over_before_forward_units"] = j.prune_over_forward_after / j.prune_over_forward_before
        keep = ["model", "calib_nsamples", "calib_seqlen", "comp", "prune_over_dense_pass_before",
                "prune_over_dense_pass_after", "prune_over_forward_before", "prune_over_forward_after",
                "after_over_before_seconds", "after_over_before_forward_units"]  # fmt: skip
        out.append(j[keep].round(3).to_markdown(index=False))
    mem = []
    for r in w[w.code == "after"].itertuples():
        nbytes = {"fp32": 4, "bf16": 2, "fp16": 2}[r.dtype]
        model = working_memory_gib(r.model, int(r.layers_built), int(r.calib_nsamples * r.calib_seqlen), nbytes,
                                   r.comp, float(r.ratio), int(r.params_before))  # fmt: skip
        measured = r.peak_rss_gib - r.baseline_rss_gib
        mem.append({**{k: getattr(r, k) for k in KEYS if k != "code"}, "measured_gib": measured,
                    **{f"model_{k}_gib": v for k, v in model.items()}})  # fmt: skip
    if mem:
        out.append("\nPeak RSS of the prune above the process before it (measured) vs the memory model (GiB)\n")
        out.append(pd.DataFrame(mem).round(3).to_markdown(index=False))
    for scaling in sorted(w.head_scaling.dropna().unique()):  # the score stage differs: fit each on its own
        c = fits(w[w.head_scaling == scaling])
        if not c:
            continue
        out.append(f"\nFitted constants, head_scaling={scaling} (seconds per unit of work, see the module docstring)\n")
        out.append(pd.Series(c).map(lambda v: f"{v:.3e}").to_frame("seconds per unit").to_markdown())
        ext = {
            (m, f"{n}x{s}", comp, f"stats_cache_gib={gib:g}"): extrapolate(c, m, n, s, comp, gib)
            for m in ("llama-7b", "llama-2-70b")
            for n, s in ((128, 2048),)
            for comp, gib in (("sequential", 4.0), ("dense", 4.0), ("dense", 1e4))
        }
        out.append(f"\nExtrapolated whole-model seconds per stage on this machine, head_scaling={scaling} (fit above; "
                   "dense compensation re-runs the dense pass unless every layer's Gram matrices fit "
                   "stats_cache_gib)\n")  # fmt: skip
        out.append(pd.DataFrame(ext).T.round(1).to_markdown())
    if png:
        plot(w, png)
        out.append(f"\nfigure: {png}")
    return "\n".join(out)


def _label(r: Any) -> str:
    """One bar's name: the row's shape, calibration size, head scaling and compensation."""
    return f"{r.model} L{int(r.layers_built)} {int(r.calib_nsamples)}x{int(r.calib_seqlen)} {r.head_scaling} {r.comp}"


def plot(w: pd.DataFrame, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    after = w[w.code == "after"].copy()
    stages = [c for c in sorted(after.columns) if c.startswith("stage_") and c.endswith("_over_dense_pass")]
    # (a) stage breakdown of each configuration, in dense passes, with the before totals beside
    ax = axes[0]
    labels = [_label(r) for r in after.itertuples()]
    bottom = [0.0] * len(after)
    for col in stages:
        vals = after[col].fillna(0).tolist()
        ax.barh(labels, vals, left=bottom, label=col.replace("stage_", "").replace("_over_dense_pass", ""))
        bottom = [b + v for b, v in zip(bottom, vals)]
    before = w[w.code == "before"]
    for r in before.itertuples():
        lab = _label(r)
        if lab in labels:
            ax.plot([r.prune_over_dense_pass], [labels.index(lab)], "k*", ms=10)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlim(0, max([*bottom, 1.0]) * 1.45)  # room for the legend
    ax.set_xlabel("prune time in dense calibration passes (black star: before)")
    ax.legend(fontsize=6, loc="upper right")
    ax.tick_params(axis="y", labelsize=6)
    # (b) per-layer seconds of each stage vs the layer's parameters (shapes)
    ax = axes[1]
    after["per_layer_params"] = after.model.map(layer_params)
    for stage in TOKEN_STAGES + SOLVE_STAGES:
        col = f"stage_{stage}_seconds"
        if col in after:
            pts = after[after[col].notna()]
            per_tok = pts[col] / (pts.layers_built * pts.calib_nsamples * pts.calib_seqlen)
            y = pts[col] / pts.layers_built if stage in SOLVE_STAGES else per_tok * 1e3
            ax.loglog(
                pts.per_layer_params,
                y,
                "o",
                label=f"{stage} ({'s/layer' if stage in SOLVE_STAGES else 'ms/layer/1k tokens'})",
            )
    ax.set_xlabel("attention+MLP parameters per layer (shape)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=6)
    # (c) peak RSS vs model parameters
    ax = axes[2]
    for comp, part in after.groupby("comp"):
        ax.loglog(part.model.map(layer_params) * part.layers_built, part.peak_rss_gib, "o", label=f"{comp}")
    ax.set_xlabel("attention+MLP parameters built")
    ax.set_ylabel("peak RSS of the prune (GiB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def speed_report(paths: list[str]) -> str:
    out = []
    for path in paths:
        df = pd.read_csv(path)
        df = df[df.experiment == "speed"].copy()
        df["batch"] = df.options.map(lambda o: json.loads(o)["batch"])
        df["device"] = df.options.map(lambda o: json.loads(o)["device"])
        t = df.pivot_table(index=["model", "device", "batch", "ratio"], columns="metric", values="value",
                           aggfunc="last")  # fmt: skip
        cols = ["decode_tokens_per_s", "speedup", "limit_speedup", "speedup_over_limit", "ttft_s", "peak_mem_gib"]
        out.append(f"\n{Path(path).name}\n")
        out.append(t[[c for c in cols if c in t]].astype(float).round(3).to_markdown())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--csv", default="results/cost.csv")
    c.add_argument("--png", default="results/cost.png")
    s = sub.add_parser("speed")
    s.add_argument("csvs", nargs="+")
    args = p.parse_args(argv)
    print(cost_report(args.csv, args.png) if args.cmd == "cost" else speed_report(args.csvs))


if __name__ == "__main__":
    main()
