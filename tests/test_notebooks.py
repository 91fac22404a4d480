"""Every notebook runs from the committed CSVs alone (paper rows; ours when present) and is committed stripped."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from numprune.results import append_rows, read_rows

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
OURS = {"figure2_quality.ipynb"}  # the SmolLM2 benchmark notebook is another issue's


def execute(path: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def text(nb) -> str:
    return "\n".join(str(o.get("text", "")) + str(o.get("data", "")) for c in nb.cells for o in c.get("outputs", []))


def test_notebooks_are_committed_stripped():
    assert {p.name for p in NOTEBOOKS} - OURS >= {
        "figure2_ppl_vs_ratio.ipynb",
        "table1_comparison.ipynb",
        "figure4_calib_samples.ipynb",
        "figure5_speed.ipynb",
        "table3_llamagen.ipynb",
    }
    for p in NOTEBOOKS:
        for cell in nbformat.read(p, as_version=4).cells:
            assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None), p.name


# notebook -> (the CSV it reads, which paper row it must show, the decimals it shows)
SHOWN = {
    "figure2_ppl_vs_ratio": ("table6_llama2_ppl", lambda r: r["eval_dataset"] == "wikitext2", 3),
    "figure4_calib_samples": ("figure4_calib_samples", lambda r: True, 3),
    "figure5_speed": ("figure5_speed", lambda r: r["metric"] == "decode_tokens_per_s", 3),
    "table1_comparison": ("table1_5_llama1_ppl", lambda r: r["ratio"] in ("0.1", "0.2", "0.3", "0.5", "0.7"), 2),
    "table3_llamagen": ("table3_llamagen", lambda r: r["metric"] == "fid", 3),
}


def shown(value: float, decimals: int) -> str:
    """How a rounded value appears in a printed DataFrame (trailing zeros may be padded)."""
    return f"{round(value, decimals):.{decimals}f}".rstrip("0").rstrip(".")


@pytest.mark.parametrize("name", sorted(SHOWN))
def test_notebook_shows_the_paper_rows_and_ours(name, tmp_path, monkeypatch):
    """Run on the paper's rows alone, a notebook says so and shows them; with a CSV of ours beside them (the
    paper's rows x 1.1 here), it shows both."""
    assert {p.stem for p in NOTEBOOKS if p.name not in OURS} == set(SHOWN)
    csv, pick, decimals = SHOWN[name]
    paper = read_rows(ROOT / "results" / "paper" / f"{csv}.csv")
    row = next(r for r in paper if r["method"] == "numerical" and float(r["ratio"]) > 0 and pick(r))
    monkeypatch.setenv("NUMPRUNE_RESULTS", str(tmp_path))
    alone = text(execute(ROOT / "notebooks" / f"{name}.ipynb"))
    assert "does not exist yet" in alone and shown(float(row["value"]), decimals) in alone
    ours = [{k: v for k, v in r.items() if k != "time"} | {"value": float(r["value"]) * 1.1} for r in paper]
    append_rows(tmp_path / f"{csv}.csv", ours)
    both = text(execute(ROOT / "notebooks" / f"{name}.ipynb"))
    assert f"{csv}.csv does not exist" not in both
    assert shown(float(row["value"]), decimals) in both and shown(1.1 * float(row["value"]), decimals) in both
