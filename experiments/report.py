"""Print a results CSV as the markdown tables quoted in the README: perplexity per method and ratio.

python experiments/report.py results/smollm2_numerical.csv
"""

from __future__ import annotations

import argparse

import pandas as pd


def perplexity_table(df: pd.DataFrame, eval_dataset: str) -> pd.DataFrame:
    ppl = df[(df.metric == "ppl") & (df.eval_dataset == eval_dataset)]
    return ppl.pivot_table(index="method", columns="ratio", values="value", aggfunc="last").round(2)


def metric_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[df.metric == metric].pivot_table(index="method", columns="ratio", values="value", aggfunc="last").round(1)


def md(table: pd.DataFrame) -> str:
    return table.astype(object).where(table.notna(), "").to_markdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    args = parser.parse_args()
    df = pd.read_csv(args.csv)
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
    main()
