"""The paper's printed numbers (../shared/PAPER_TABLES.md) as rows of the one results schema, per artefact.

    PYTHONPATH=. python experiments/paper_tables.py [--source ../shared/PAPER_TABLES.md] [--out results/paper]

Writes ``results/paper/<experiment>.csv`` with the same ``experiment`` names as our configs, so a notebook
concatenates the paper rows and ours and pivots them. Rows carry ``method`` (``dense`` for the baselines,
``numerical`` for the paper's "Ours", the baselines by their names), the ratio, the model's hub ID, the
evaluation set and length, the metric and the printed value ("Nan" -> NaN; percentages as fractions, as
lm-eval and our image metrics report them). ``eval_source`` says where the
number comes from: ``paper:FACT`` (a printed table) or ``paper:DIGITIZED`` (read off a figure).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

from numprune.results import COLUMNS

MODELS = {
    "7B": "huggyllama/llama-7b",
    "13B": "huggyllama/llama-13b",
    "30B": "huggyllama/llama-30b",
    "65B": "huggyllama/llama-65b",
    "2-7B": "meta-llama/Llama-2-7b-hf",
    "2-13B": "meta-llama/Llama-2-13b-hf",
    "2-70B": "meta-llama/Llama-2-70b-hf",
    "3-8B": "meta-llama/Meta-Llama-3-8B",
    "3-70B": "meta-llama/Meta-Llama-3-70B",
    "LLaMA-7B": "huggyllama/llama-7b",
    "LLaMA-13B": "huggyllama/llama-13b",
    "LlamaGen-XXL (cfg=1.75)": "LlamaGen-XXL",
    "LlamaGen-3B (cfg=1.65)": "LlamaGen-3B",
}
EVALS = {"Wiki": "wikitext2", "PTB": "ptb", "C4": "c4"}
ZEROSHOT = {"BoolQ": "boolq", "PIQA": "piqa", "HellaSwag": "hellaswag", "WinoGrande": "winogrande"}
ZEROSHOT |= {"ARC-e": "arc_easy", "ARC-c": "arc_challenge", "OBQA": "openbookqa", "Avg": "average"}


def method_name(text: str) -> str:
    t = text.strip()
    return {"Ours": "numerical", "Baseline": "dense", "dense": "dense", "Dense": "dense"}.get(t, t)


def number(text: str) -> float:
    t = text.strip().rstrip("%").lstrip("≈")
    return math.nan if t.lower() == "nan" else float(t)


def ratio(text: str) -> float:
    t = text.strip()
    return 0.0 if t in ("–", "-", "", "Dense") else float(t.rstrip("%")) / 100


def tables(markdown: str) -> dict[str, list[list[str]]]:
    """Markdown tables keyed by their section heading (``### 6.1 Table 5 ...``): header + body rows."""
    out: dict[str, list[list[str]]] = {}
    heading = ""
    for line in markdown.splitlines():
        if line.startswith("### "):
            heading = line[4:]
        elif line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            out.setdefault(heading, []).append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def row(experiment, model, method, r, dataset, metric, value, seqlen="", kind="FACT") -> dict:
    return {
        "experiment": experiment,
        "model": model,
        "method": method,
        "ratio": r,
        "ratio_of": "paper",
        "eval_dataset": dataset,
        "eval_seqlen": seqlen,
        "metric": metric,
        "value": value,
        "eval_source": f"paper:{kind}",
        "versions": {},
        "options": {},
    }


def perplexity_rows(experiment: str, table: list[list[str]], seqlen: int = 2048) -> list[dict]:
    """Tables 5/6/7: ``Method | Ratio | <model> <set> ...`` columns."""
    header, rows = table[0], []
    for cells in table[1:]:
        for col, value in zip(header[2:], cells[2:]):
            model, dataset = col.rsplit(" ", 1)
            rows.append(
                row(
                    experiment,
                    MODELS[model],
                    method_name(cells[0]),
                    ratio(cells[1]),
                    EVALS[dataset],
                    "ppl",
                    number(value),
                    seqlen,
                )
            )
    return rows


def parse(markdown: str) -> dict[str, list[dict]]:
    """Every printed number, grouped by our experiment names."""
    t = {k.split(":")[0]: v for k, v in tables(markdown).items()}
    get = lambda prefix: next(v for k, v in t.items() if k.startswith(prefix))  # noqa: E731
    out = {
        "table1_5_llama1_ppl": perplexity_rows("table1_5_llama1_ppl", get("6.1 ")),
        "table6_llama2_ppl": perplexity_rows("table6_llama2_ppl", get("6.2 ")),
        "table7_llama3_ppl": perplexity_rows("table7_llama3_ppl", get("6.3 ")),
    }
    zs = []
    for cells in get("6.5 ")[1:]:
        model = MODELS.get(cells[0]) or MODELS[cells[0]]
        for name, value in zip(get("6.5 ")[0][3:], cells[3:]):
            zs.append(
                row(
                    "table2_9_zeroshot",
                    model,
                    method_name(cells[1]),
                    ratio(cells[2]),
                    f"zeroshot:{ZEROSHOT[name]}",
                    "acc",
                    number(value) / 100,
                )
            )
    out["table2_9_zeroshot"] = zs
    t8 = get("6.6 ")
    out["table8_mmlu_gsm8k"] = [
        row(
            "table8_mmlu_gsm8k",
            MODELS[col.split(" ")[0]],
            "dense" if cells[0] == "Dense" else "numerical",
            ratio(cells[0]),
            f"mmlu_gsm8k:{col.split(' ')[1].lower()}",
            "exact_match" if "GSM8K" in col else "acc",
            number(value) / 100,
        )
        for cells in t8[1:]
        for col, value in zip(t8[0][1:], cells[1:])
    ]
    gen, model = [], ""
    for cells in get("6.7 ")[1:]:
        model = MODELS[cells[0]] if cells[0] else model
        for name, value in zip(get("6.7 ")[0][3:], cells[3:]):
            metric = {"prec": "precision", "rec": "recall"}.get(name.rstrip("↓↑").lower(), name.rstrip("↓↑").lower())
            scale = 0.01 if value.endswith("%") else 1.0
            gen.append(
                row(
                    "table3_llamagen",
                    model,
                    method_name(cells[1]),
                    ratio(cells[2]),
                    "imagenet384",
                    metric,
                    number(value) * scale,
                )
            )
    out["table3_llamagen"] = gen
    t4 = get("6.8 ")
    out["table4_10_seqlen128"] = [
        row(
            "table4_10_seqlen128",
            MODELS["7B"],
            method_name(cells[0]),
            ratio(col.split(" ")[0]),
            EVALS[col.split(" ")[1]],
            "ppl",
            number(value),
            128,
        )
        for cells in t4[1:]
        for col, value in zip(t4[0][1:], cells[1:])
    ]
    f4 = get("6.9 ")
    samples = {"0 samples": ("numerical-no-compensation", 128), "128": ("numerical", 128)}
    samples |= {"512": ("numerical", 512), "1024": ("numerical", 1024)}
    out["figure4_calib_samples"] = [
        {
            **row(
                "figure4_calib_samples",
                MODELS["7B"],
                samples[col][0],
                ratio(cells[0]),
                "wikitext2",
                "ppl",
                number(value),
                2048,
                "DIGITIZED",
            ),
            "calib_nsamples": samples[col][1],
        }
        for cells in f4[1:]
        for col, value in zip(f4[0][1:], cells[1:])
        if col in samples
    ]
    f5 = get("6.10 ")
    metrics = {"GPU memory": "peak_mem_gib", "Generation speed": "decode_tokens_per_s"}
    out["figure5_speed"] = [
        row(
            "figure5_speed",
            MODELS["7B"],
            "dense" if col == "0%" else "numerical",
            ratio(col),
            "speed:speed",
            next(m for k, m in metrics.items() if cells[0].startswith(k)),
            number(value),
            kind="DIGITIZED",
        )
        for cells in f5[1:]
        for col, value in zip(f5[0][1:], cells[1:])
    ]
    return out


def write(markdown: str, out: str | Path) -> dict[str, int]:
    """Write one CSV per experiment; returns the row counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in parse(markdown).items():
        with open(out / f"{name}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow({c: ("" if r.get(c) is None else r.get(c, "")) for c in COLUMNS})
        counts[name] = len(rows)
    return counts


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(here.parent / "shared" / "PAPER_TABLES.md"))
    parser.add_argument("--out", default=str(here / "results" / "paper"))
    args = parser.parse_args()
    for name, n in write(Path(args.source).read_text(), args.out).items():
        print(f"{Path(args.out) / name}.csv: {n} rows")


if __name__ == "__main__":
    main()
