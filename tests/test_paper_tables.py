"""The paper's printed rows as CSV: exact values, and the committed CSVs equal a fresh parse of the markdown."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from numprune.results import COLUMNS, read_rows

ROOT = Path(__file__).parent.parent
PAPER = ROOT / "results" / "paper"
SOURCE = ROOT.parent / "shared" / "PAPER_TABLES.md"


def value(name, **match):
    rows = [r for r in read_rows(PAPER / f"{name}.csv") if all(r[k] == str(v) for k, v in match.items())]
    assert len(rows) == 1, (match, len(rows))
    return float(rows[0]["value"])


def test_exact_printed_values():
    l7, l65, l3 = "huggyllama/llama-7b", "huggyllama/llama-65b", "meta-llama/Meta-Llama-3-8B"
    t5 = dict(model=l7, ratio=0.5, eval_dataset="wikitext2")
    assert value("table1_5_llama1_ppl", method="numerical", **t5) == 11.66
    assert value("table1_5_llama1_ppl", method="FLAP", **t5) == 21.89
    assert value("table1_5_llama1_ppl", method="dense", model=l7, ratio=0.0, eval_dataset="c4") == 7.08
    assert math.isnan(value("table1_5_llama1_ppl", method="FLAP", model=l65, ratio=0.7, eval_dataset="wikitext2"))
    assert value("table7_llama3_ppl", method="FLAP", model=l3, ratio=0.5, eval_dataset="wikitext2") == 39.44
    assert value("table4_10_seqlen128", method="FLAP", ratio=0.2, eval_dataset="c4") == 13.95
    obqa = value("table2_9_zeroshot", method="numerical", model=l7, ratio=0.2, eval_dataset="zeroshot:openbookqa")
    assert obqa == pytest.approx(0.394)
    assert value("table3_llamagen", method="numerical", model="LlamaGen-3B", ratio=0.1, metric="fid") == 3.97
    assert value("table3_llamagen", method="dense", model="LlamaGen-XXL", ratio=0.0, metric="precision") == 0.8073
    gsm = value("table8_mmlu_gsm8k", model="meta-llama/Llama-2-13b-hf", ratio=0.1, eval_dataset="mmlu_gsm8k:gsm8k")
    assert gsm == pytest.approx(0.156)
    assert value("figure4_calib_samples", method="numerical-no-compensation", ratio=0.5) == 39.59
    assert value("figure5_speed", ratio=0.5, metric="decode_tokens_per_s") == 45.0


def test_row_counts_and_schema():
    counts = {"table1_5_llama1_ppl": 29 * 12, "table6_llama2_ppl": 25 * 9, "table7_llama3_ppl": 16 * 6}
    counts |= {"table2_9_zeroshot": 24 * 8, "table8_mmlu_gsm8k": 60, "table3_llamagen": 70}
    counts |= {"table4_10_seqlen128": 60, "figure4_calib_samples": 20, "figure5_speed": 12}
    for name, n in counts.items():
        rows = read_rows(PAPER / f"{name}.csv")
        assert len(rows) == n and list(rows[0]) == COLUMNS and {r["experiment"] for r in rows} == {name}


def test_committed_csvs_match_the_markdown(tmp_path):
    if not SOURCE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI: {SOURCE} is missing")
        pytest.skip("../shared/PAPER_TABLES.md not present")
    from experiments.paper_tables import write

    write(SOURCE.read_text(), tmp_path)
    for f in PAPER.glob("*.csv"):
        assert (tmp_path / f.name).read_text() == f.read_text(), f.name
