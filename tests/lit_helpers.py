"""A tiny random model saved with a word-level tokenizer, and a text file in its vocabulary (offline)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import tiny_model


def make_tiny_dir(root: Path, kv_heads: int = 2, seed: int = 0, words: int = 4000) -> tuple[Path, Path]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(127)} | {"[UNK]": 127}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = root / f"tiny-kv{kv_heads}-s{seed}"
    tiny_model("llama", kv_heads, seed=seed).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="w0").save_pretrained(path)
    text = root / "text.txt"
    if not text.exists():
        text.write_text(" ".join(f"w{(i * 7 + i // 13) % 127}" for i in range(words)))
    return path, text
