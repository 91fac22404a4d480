"""Exported GGUF files in a real llama.cpp build: ``llama-perplexity`` equals numprune's evaluation of the same
model with llama.cpp's protocol. Slow; needs ``NUMPRUNE_LLAMA_CPP`` (llama.cpp's bin/ folder, docs/gguf.md)."""

from __future__ import annotations

import os

import pytest
import torch

from numprune import export_gguf, prune_
from numprune.data import calibration_windows, load_corpus
from numprune.eval.llamacpp import ENV, llama_perplexity
from numprune.eval.perplexity import llamacpp_perplexity
from tests.test_gguf import pruned_llama, tiny_llama

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.environ.get(ENV), reason=f"{ENV} not set")]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def text_file(shared_data, tmp_path_factory):
    """The first 40 kB of WikiText-2 test, the same bytes for llama.cpp and for numprune (CRLF kept)."""
    raw = open(os.path.join(shared_data, "wikitext2", "wiki.test.raw"), "rb").read()[:40000]
    text = raw.decode("utf-8", errors="ignore")
    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_bytes(text.encode("utf-8"))
    return path, text


@pytest.fixture(scope="module")
def smollm2():
    from numprune.hub import load_model, smollm2_path

    model, tok = load_model("smollm2")
    return model, tok, smollm2_path()


def both(model, tok, folder, text_file, out, n_ctx: int, chunks: int, dtype: str = "f32") -> tuple[float, float]:
    export_gguf(model, out, dtype=dtype, tokenizer=folder)
    theirs = llama_perplexity(out, text_file[0], n_ctx, chunks, threads=1)
    ours = llamacpp_perplexity(model, tok, text_file[1], n_ctx, chunks)
    assert theirs["chunks"] == ours["windows"] == chunks
    return theirs["ppl"], ours["ppl"]


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("pruned", [False, True], ids=["uniform", "pruned"])
def test_tiny_models_match_in_llama_cpp(tmp_path, smollm2, text_file, kv_heads, pruned):
    _, tok, folder = smollm2
    model = pruned_llama(kv_heads, vocab=49152) if pruned else tiny_llama(kv_heads, 49152)
    theirs, ours = both(model, tok, folder, text_file, tmp_path / "t.gguf", n_ctx=64, chunks=8)
    assert theirs == pytest.approx(ours, rel=1e-3)


def test_tiny_model_with_empty_blocks_matches_in_llama_cpp(tmp_path, smollm2, text_file):
    _, tok, folder = smollm2
    model = tiny_llama(2, 49152)
    calib = torch.randint(0, 49152, (8, 32), generator=torch.Generator().manual_seed(1))
    prune_(model, ratio=0.7, calibration=calib, min_heads=0, min_channels=0, progress=False)
    theirs, ours = both(model, tok, folder, text_file, tmp_path / "e.gguf", n_ctx=64, chunks=8)
    assert theirs == pytest.approx(ours, rel=1e-3)


def test_smollm2_dense_and_pruned_50_match_in_llama_cpp(tmp_path, smollm2, text_file, shared_data):
    from numprune.hub import load_model

    _, tok, folder = smollm2
    model, _ = load_model(str(folder))  # its own copy: pruned in place below
    dense = both(model, tok, folder, text_file, tmp_path / "d.gguf", n_ctx=256, chunks=8)
    assert dense[0] == pytest.approx(dense[1], rel=1e-3)
    calib = calibration_windows(load_corpus("wikitext2:validation", shared_data), tok, 16, 256, seed=0)
    prune_(model, ratio=0.5, calibration=calib, progress=False)
    theirs, ours = both(model, tok, folder, text_file, tmp_path / "p.gguf", n_ctx=256, chunks=8)
    assert theirs == pytest.approx(ours, rel=1e-2) and ours > dense[1]
