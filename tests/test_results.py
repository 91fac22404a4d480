"""The results CSV: schema enforcement, resume keys, and no lost rows when processes append concurrently."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from numprune.results import COLUMNS, append_rows, has_row, read_rows


def _append_many(path: str, worker: int) -> None:
    for j in range(15):
        append_rows(path, [{"experiment": "x", "method": f"m{worker}", "ratio": j, "metric": "ppl", "value": j}])


def test_concurrent_appends_lose_nothing(tmp_path):
    path = str(tmp_path / "r.csv")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = read_rows(path)
    assert len(rows) == 60 and {(r["method"], r["ratio"]) for r in rows} == {
        (f"m{w}", str(j)) for w in range(4) for j in range(15)
    }
    assert list(rows[0]) == COLUMNS


def test_unknown_column_refused_and_resume_key(tmp_path):
    path = tmp_path / "r.csv"
    with pytest.raises(ValueError, match="not in the results schema"):
        append_rows(path, [{"experiment": "x", "bogus": 1}])
    row = {"experiment": "x", "method": "numerical", "ratio": 0.2, "metric": "ppl", "options": {"damp": 0.1}}
    append_rows(path, [{**row, "value": 3.0}])
    assert has_row(path, row) and not has_row(path, {**row, "ratio": 0.4})


def test_replace_drops_only_the_rows_with_a_new_rows_key(tmp_path):
    """``replace=True``: a re-measured row replaces its old value; rows with other keys (another code label in
    ``options``, another metric) stay, in their order."""
    path = tmp_path / "r.csv"
    base = {"experiment": "x", "method": "m", "ratio": 0.2}
    old = [{**base, "metric": "a", "value": 1.0, "options": {"code": "before"}},
           {**base, "metric": "a", "value": 2.0, "options": {"code": "after"}},
           {**base, "metric": "b", "value": 3.0, "options": {"code": "after"}}]  # fmt: skip
    append_rows(path, old)
    append_rows(path, [{**base, "metric": "a", "value": 5.0, "options": {"code": "after"}}], replace=True)
    got = [(r["metric"], r["options"], float(r["value"])) for r in read_rows(path)]
    assert got == [("a", '{"code": "before"}', 1.0), ("b", '{"code": "after"}', 3.0), ("a", '{"code": "after"}', 5.0)]
    append_rows(path, [{**base, "metric": "b", "value": 7.0, "options": {"code": "after"}}])  # default: append
    assert len(read_rows(path)) == 4
