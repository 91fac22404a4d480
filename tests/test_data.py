"""Corpora: local files, protocols, windows, and clear errors."""

from __future__ import annotations

import pytest
import torch

from numprune.data import bos_token, calibration_windows, eval_windows, load_corpus, parse_name
from numprune.errors import NumpruneError


class CharTokenizer:
    """One token per byte: makes window arithmetic exact."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text.encode())}


class BosCharTokenizer(CharTokenizer):
    """Prepends BOS (id 1) when asked for special tokens, as Gemma's tokenizer does."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        ids = super().__call__(text)["input_ids"]
        return {"input_ids": [1, *ids] if add_special_tokens else ids}


def test_windows_follow_the_tokenizers_bos_policy(tmp_path):
    f = tmp_path / "t.txt"
    text = "abcdefghij" * 10
    f.write_text(text)
    corpus = load_corpus(str(f))
    assert bos_token(CharTokenizer()) is None and bos_token(BosCharTokenizer()) == 1
    windows = eval_windows(corpus, BosCharTokenizer(), seqlen=30)
    assert windows.shape == (3, 30) and windows[:, 0].tolist() == [1, 1, 1]  # 100 tokens -> 3 windows of 29
    assert bytes(windows[:, 1:].reshape(-1).tolist()).decode() == text[:87]  # consecutive, each token once
    assert eval_windows(corpus, BosCharTokenizer(), seqlen=30, max_windows=2).shape == (2, 30)
    calib = calibration_windows(corpus, BosCharTokenizer(), nsamples=4, seqlen=20, seed=3)
    assert calib.shape == (4, 20) and calib[:, 0].tolist() == [1] * 4
    for row in calib[:, 1:]:
        assert bytes(row.tolist()).decode() in text


def test_parse_names():
    assert parse_name("wikitext2") == ("wikitext2", "test")
    assert parse_name("wikitext2:valid") == ("wikitext2", "validation")
    assert parse_name("ptb", default_split="train") == ("ptb", "train")
    with pytest.raises(NumpruneError, match="unknown dataset"):
        parse_name("imagenet")
    with pytest.raises(NumpruneError, match="no test split"):
        parse_name("c4:test")


def test_local_files_and_ptb_protocol(shared_data):
    wiki = load_corpus("wikitext2", shared_data)
    # the data README's sha256 of wiki.test.raw; relative to the data directory: no path of this machine
    assert wiki.source == "local:wikitext2/wiki.test.raw#4f3e427e4aff" and len(wiki.text) > 1_000_000
    ptb = load_corpus("ptb", shared_data)
    # 3,761 sentences, 82,430 tokens counting one end-of-sentence each (data README): 78,669 words, one " " apart
    assert "\n" not in ptb.text and len(ptb.text.split(" ")) == 82_430 - 3_761
    valid = load_corpus("wikitext2:validation", shared_data)
    assert valid.source.startswith("local:wikitext2/wiki.valid.tokens#")


def test_missing_data_offline_fails_at_once_without_the_hub(tmp_path, monkeypatch):
    """Offline, a dataset that is not local is refused before the datasets library is asked (it would retry for
    ~40 s): load_dataset must not be called at all."""
    import datasets

    def never(*args, **kwargs):
        raise AssertionError("the hub was asked although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(datasets, "load_dataset", never)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NumpruneError, match="offline or unreachable"):
        load_corpus("wikitext2:train", tmp_path)


def test_text_file_and_windows(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 10)
    corpus = load_corpus(str(f))
    windows = eval_windows(corpus, CharTokenizer(), seqlen=30)
    assert windows.shape == (3, 30)  # 100 tokens -> 3 non-overlapping windows
    assert bytes(windows[1].tolist()).decode() == ("abcdefghij" * 10)[30:60]
    calib = calibration_windows(corpus, CharTokenizer(), nsamples=5, seqlen=20, seed=3)
    again = calibration_windows(corpus, CharTokenizer(), nsamples=5, seqlen=20, seed=3)
    assert calib.shape == (5, 20) and torch.equal(calib, again)
    with pytest.raises(NumpruneError, match="too short"):
        calibration_windows(corpus, CharTokenizer(), nsamples=2, seqlen=500)
