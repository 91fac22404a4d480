"""Markdown tables for docs/quality.md and docs/ablations.md, from the result CSVs alone.

PYTHONPATH=. python experiments/report.py quality      # prints the tables of results/quality_smollm2.csv
PYTHONPATH=. python experiments/report.py readme [CSV]  # the README's two test-set tables (default: the same CSV)
PYTHONPATH=. python experiments/report.py ablations    # one table per results/ablation_*.csv
PYTHONPATH=. python experiments/report.py exchange     # issue 13's table (results/ablation_exchange.csv)
PYTHONPATH=. python experiments/report.py table results/smollm2_numerical.csv   # any results CSV: ppl per method
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ORDER = ["numerical+", "numerical", "flap", "slimgpt", "wanda-sp", "mag-sp", "llm-pruner", "magnitude", "random"]
ORDER += ["slicegpt", "depth"]


def bold_best(t: pd.DataFrame) -> pd.DataFrame:
    """The table as strings (2 decimals), the lowest perplexity of each column in bold."""
    out = t.map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    for col in t.columns:
        if t[col].notna().any():
            best = t[col].idxmin()
            out.loc[best, col] = f"**{out.loc[best, col]}**"
    return out


def _ppl(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df.metric == "ppl"].copy()
    df["value"] = df.value.astype(float)
    return df


def quality(path: str = "results/quality_smollm2.csv") -> str:
    df = pd.read_csv(path)
    ppl = _ppl(df)
    out = []
    dense = ppl[ppl.method == "dense"].set_index("eval_dataset").value
    for ev in ("wikitext2", "ptb", "ptb:validation"):
        t = ppl[(ppl.eval_dataset == ev) & (ppl.method != "dense")].pivot_table(
            index="method", columns="ratio", values="value"
        )
        t = t.reindex([m for m in ORDER if m in t.index] + [m for m in t.index if m not in ORDER])
        t.columns = [f"{round(c * 100)}%" for c in t.columns]
        out.append(f"\n**{ev}** perplexity (dense {dense.get(ev, float('nan')):.2f})\n")
        out.append(bold_best(t).to_markdown(colalign=["left"] + ["right"] * len(t.columns)))
        for ours in ("numerical", "numerical+"):
            if {ours, "flap"} <= set(t.index):
                out.append(f"\nratio perplexity({ours}) / perplexity(FLAP): ")
                out.append(", ".join(f"{c} {t.loc[ours, c] / t.loc['flap', c]:.3f}" for c in t.columns))
                out.append("\n")
    ach = df[df.metric == "ppl"].groupby(["method", "ratio"]).ratio_achieved.first().unstack()
    out.append("\nAchieved parameter ratio (attention + MLP weights)\n")
    out.append(ach.round(4).to_markdown())
    cost = df[df.metric.isin(["prune_seconds", "peak_rss_gib"])].pivot_table(
        index="method", columns="metric", values="value", aggfunc="first"
    )
    out.append("\nPruning wall time and peak RSS at 20% (full pipeline, 1 thread, shared CPU)\n")
    out.append(cost.round(2).to_markdown())
    return "\n".join(out)


def readme(path: str = "results/quality_smollm2.csv") -> str:
    """WikiText-2 test and PTB test perplexity of every method, the best of each column in bold."""
    ppl = _ppl(pd.read_csv(path))
    dense = ppl[ppl.method == "dense"].set_index("eval_dataset").value
    out = []
    for ev, title in (("wikitext2", "WikiText-2 test"), ("ptb", "PTB test")):
        t = ppl[(ppl.eval_dataset == ev) & (ppl.method != "dense")].pivot_table(
            index="method", columns="ratio", values="value"
        )
        t = t.reindex([m for m in ORDER if m in t.index] + [m for m in t.index if m not in ORDER])
        t.columns = [f"{round(c * 100)}%" for c in t.columns]
        t.index.name = f"{title} (dense {dense[ev]:.2f})" if ev in dense else f"{title} (dense: not in the CSV)"
        out.append(bold_best(t).to_markdown(colalign=["left"] + ["right"] * len(t.columns)))
    return "\n\n".join(out)


def ablations(folder: str = "results") -> str:
    out = []
    for f in sorted(Path(folder).glob("ablation_*.csv")):
        df = pd.read_csv(f)
        ppl = _ppl(df)
        t = ppl.pivot_table(index="method", columns=["eval_dataset", "ratio"], values="value", aggfunc="first")
        extra = df[df.metric == "ppl"].groupby(["method", "ratio"])[["kv_heads_pruned", "channels_pruned"]].first()
        extra = extra.unstack("ratio")
        extra.columns = [f"{a} {int(b * 100)}%" for a, b in extra.columns]
        t.columns = [f"{a} {round(b * 100)}%" for a, b in t.columns]
        secs = df[df.metric.str.startswith("prune_seconds")].pivot_table(
            index="method", columns="ratio", values="value", aggfunc="first"
        )
        secs.columns = [f"s {round(c * 100)}%" for c in secs.columns]
        out.append(f"\n### {f.stem}\n")
        out.append(t.join(extra).join(secs).round(2).to_markdown())
    return "\n".join(out)


def exchange(path: str = "results/ablation_exchange.csv") -> str:
    """One row per rule and ratio: perplexities (and x dense), heads pruned, KV cache and attention FLOPs kept
    (fractions of dense), decode tokens/s of the pruned model against the dense one measured alongside."""
    df = pd.read_csv(path)
    ppl = _ppl(df)
    dense = ppl[ppl.method == "dense"].set_index("eval_dataset").value
    cols = {"ptb:validation": "PTB val", "wikitext2": "WT2 test", "ptb": "PTB test"}
    t = ppl.pivot_table(index=["ratio", "method"], columns="eval_dataset", values="value", aggfunc="last")
    out = t[list(cols)].rename(columns=cols)
    for ev, name in cols.items():
        if ev != "ptb:validation":
            out[f"{name} x dense"] = t[ev] / dense[ev]
    first = df[df.metric == "ppl"].groupby(["ratio", "method"])
    dense_row = df[(df.method == "dense") & (df.metric == "ppl")].iloc[0]
    out["heads pruned"] = first.heads_pruned.first()
    out["KV heads pruned"] = first.kv_heads_pruned.first()
    out["KV kept"] = first.kv_bytes_per_token.first() / dense_row.kv_bytes_per_token
    out["attn FLOPs kept"] = first.attn_flops_per_token.first() / dense_row.attn_flops_per_token
    speed = df[df.eval_dataset == "speed:speed"].pivot_table(
        index=["ratio", "method"], columns="metric", values="value", aggfunc="last"
    )
    if not speed.empty:
        out["tok/s"] = speed["decode_tokens_per_s"]
        out["dense tok/s"] = speed["dense_decode_tokens_per_s"]
        out["speedup"] = speed["decode_speedup"]
    out = out.drop(index=[i for i in out.index if i[1] == "dense"])
    head = ", ".join(f"{cols[e]} {dense[e]:.2f}" for e in cols)
    return f"Dense: {head}; KV cache {int(dense_row.kv_bytes_per_token)} B/token (fp32)\n\n" + md(out.round(3))


def perplexity_table(df: pd.DataFrame, eval_dataset: str) -> pd.DataFrame:
    ppl = df[(df.metric == "ppl") & (df.eval_dataset == eval_dataset)]
    return ppl.pivot_table(index="method", columns="ratio", values="value", aggfunc="last").round(2)


def metric_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[df.metric == metric].pivot_table(index="method", columns="ratio", values="value", aggfunc="last").round(1)


def md(table: pd.DataFrame) -> str:
    return table.astype(object).where(table.notna(), "").to_markdown()


def table(path: str) -> None:
    """Every perplexity, time, memory and achieved-ratio table of one results CSV."""
    df = pd.read_csv(path)
    for dataset in sorted(df.loc[df.metric == "ppl", "eval_dataset"].dropna().unique()):
        rows = df[(df.metric == "ppl") & (df.eval_dataset == dataset)].iloc[0]
        where = f"seqlen {int(rows.eval_seqlen)}, {int(rows.eval_windows)} windows, {rows.eval_source}"
        print(f"\n{dataset} perplexity ({where})\n")
        print(md(perplexity_table(df, dataset)))
    for metric in ("prune_seconds", "peak_rss_gib", "peak_device_gib"):
        if (df.metric == metric).any():
            print(f"\n{metric}\n")
            print(md(metric_table(df, metric)))
    achieved = df[df.ratio_achieved.notna()].pivot_table(
        index="method", columns="ratio", values="ratio_achieved", aggfunc="last"
    )
    if not achieved.empty:
        print("\nachieved ratio of attention+MLP parameters\n")
        print(md(achieved.round(4)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        table(sys.argv[2])
    else:
        tables = {"quality": quality, "readme": readme, "exchange": exchange}
        print(tables.get(sys.argv[1] if sys.argv[1:] else "", ablations)(*sys.argv[2:]))
