"""The speed benchmark's arithmetic and plumbing (no timing is asserted: timings belong to the benchmark)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from numprune.eval.speed import (
    CONFIGS,
    attn_mlp_params,
    decode_bytes_per_step,
    limit_speedup,
    measure,
    plot_speed,
    random_pruned_llama,
    time_generation,
)
from numprune.results import read_rows

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "experiments" / "bench_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bytes_per_step_by_hand():
    m = random_pruned_llama("tiny", 0.0)
    c = CONFIGS["tiny"]
    d, v, n, kv = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"], c["num_key_value_heads"]
    hd = d // c["num_attention_heads"]
    params = sum(p.numel() for p in m.parameters())
    batch, ctx = 3, 10
    # untied: the input embedding is read one row per sequence, lm_head in full; fp32 = 4 bytes
    expected = 4 * (params - v * d + batch * d) + 4 * batch * ctx * n * 2 * kv * hd
    assert decode_bytes_per_step(m, batch, ctx) == expected


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_random_pruned_shapes_reach_the_ratio(ratio):
    dense = attn_mlp_params(random_pruned_llama("tiny", 0.0))
    m = random_pruned_llama("tiny", ratio)
    assert 1 - attn_mlp_params(m) / dense == pytest.approx(ratio, abs=0.03)
    widths = m.config.layer_intermediate_sizes
    assert len(set(widths)) > 1  # uneven like a global plan, so rounding has something to do
    rounded = random_pruned_llama("tiny", ratio, round_to=16).config.layer_intermediate_sizes
    assert all(w % 16 == 0 for w in rounded) and abs(sum(rounded) - sum(widths)) <= 16 * len(widths)


def test_limit_is_at_most_the_parameter_ratio_for_untied_models():
    dense, pruned = random_pruned_llama("tiny", 0.0), random_pruned_llama("tiny", 0.5)
    lim = limit_speedup(decode_bytes_per_step(dense, 1, 64), decode_bytes_per_step(pruned, 1, 64))
    # embeddings/lm_head are not pruned, so the bound sits between 1 and 1 / (1 - 0.5)
    assert 1.0 < lim < 2.0


def test_generation_loop_is_greedy_generate():
    torch.manual_seed(0)
    m = random_pruned_llama("tiny", 0.5)
    prompt = torch.randint(0, CONFIGS["tiny"]["vocab_size"], (2, 7))
    _, _, tokens = time_generation(m, prompt, 5)
    m.generation_config.eos_token_id = None  # the benchmark never stops early, so neither may the reference
    ref = m.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(tokens, ref[:, 7:])


def test_measure_reports_medians_and_memory():
    r = measure(random_pruned_llama("tiny", 0.2), 2, prompt_len=8, new_tokens=3, reps=3, warmup=0)
    assert r.decode_tokens_per_s == sorted(r.decode_all)[1] and len(r.ttft_all) == 3
    assert r.mem_kind == "rss" and r.peak_mem_gib > r.weights_gib > 0


def test_bench_rows_and_plot_in_process(tmp_path):
    """The script's worker, row builder, CSV replacement and plot, without subprocesses."""
    bench = _bench()
    args = argparse.Namespace(config="tiny", model="smollm2", prompt_len=8, seed=0)
    common = {"device": "cpu", "dtype": "fp32", "threads": 1, "seed": 0, "batches": [1, 2], "prompt_len": 8,
              "new_tokens": 3, "reps": 1, "config": "tiny"}  # fmt: skip
    specs = [{**common, "ratio": 0.0, "round_to": 1}, {**common, "ratio": 0.5, "round_to": 16}]
    res = [bench.worker(s) for s in specs]
    rows = [row for s, r in zip(specs, res) for row in bench.rows_for(args, s, r, res[0], None)]
    csv = tmp_path / "speed.csv"
    bench.replace_rows(csv, rows)
    bench.replace_rows(csv, rows)  # a rerun replaces, not duplicates
    got = read_rows(csv)
    assert len(got) == len(rows) == 2 * 2 * 11
    speedups = {(r["ratio"], json.loads(r["options"])["batch"]): float(r["value"]) for r in got
                if r["metric"] == "speedup"}  # fmt: skip
    assert speedups[("0.0", 1)] == 1.0 and speedups[("0.0", 2)] == 1.0
    lim = [float(r["value"]) for r in got if r["metric"] == "limit_speedup" and r["ratio"] == "0.5"]
    assert all(1.0 < x < 2.0 for x in lim)
    png = plot_speed(csv, tmp_path / "speed.png")
    assert png.exists() and png.stat().st_size > 1000
