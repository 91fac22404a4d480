"""Tokenizer metadata of a GGUF file, from the Hugging Face tokenizer the model was saved with.

llama.cpp re-implements the tokenizer from what the file says: the token list and types, the BPE merges, the
name of the pre-tokenizer (regex split rules it has built in), the special token ids, whether to add BOS, and
the chat template. We write what llama.cpp's own converter writes for byte-level BPE tokenizers
(``convert_hf_to_gguf.py``: ``get_vocab_base``, ``_set_vocab_gpt2``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import gguf

from numprune.errors import NumpruneError

# The probe text llama.cpp's converter encodes to identify a pre-tokenizer: the sha256 of ``str(token ids)``
# names the split rules (llama.cpp ``conversion/base.py``, ``get_vocab_base_pre``; hashes copied from there).
PRE_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}


def pre_tokenizer_name(tokenizer: Any) -> str | None:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or None when its probe hash is not one we know."""
    ids = tokenizer.encode(PRE_PROBE)
    return KNOWN_PRE.get(hashlib.sha256(str(ids).encode()).hexdigest())


def check_byte_level_bpe(tokenizer: Any) -> None:
    """Refuse tokenizers that are not byte-level BPE (llama.cpp's ``gpt2`` tokenizer model)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = model.get("type") or type(tokenizer).__name__
        raise NumpruneError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2 style, e.g. SmolLM2, LLaMA-3); this one is {kind!r}"
            + (" with byte fallback (SentencePiece style)" if model.get("byte_fallback") else "")
        )


def token_table(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for ids ``0..vocab_size-1`` (ids the tokenizer lacks: unused pads)."""
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(reverse) >= vocab_size:
        raise NumpruneError(f"the tokenizer has ids up to {max(reverse)} but the model only {vocab_size} embeddings")
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        kind = gguf.TokenType.NORMAL
        if token in added:
            if not decoder[i].normalized:  # llama.cpp expects added tokens in their normalised form
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            looks_special = token.startswith("<|") and token.endswith("|>")
            kind = gguf.TokenType.CONTROL if decoder[i].special or looks_special else gguf.TokenType.USER_DEFINED
        tokens.append(token)
        types.append(kind)
    return tokens, types


def adds_bos(tokenizer: Any) -> bool:
    """Whether encoding text prepends BOS (what numprune's evaluation and llama.cpp's tokenizer should both do)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def write_vocab(writer: gguf.GGUFWriter, tokenizer: Any, folder: Path, vocab_size: int, pre: str | None) -> str:
    """Add the tokenizer keys to ``writer``; ``folder`` holds the saved tokenizer files (merges, special tokens,
    chat template). Returns the pre-tokenizer name written."""
    check_byte_level_bpe(tokenizer)
    name = pre or pre_tokenizer_name(tokenizer)
    if name is None:
        raise NumpruneError(
            "llama.cpp does not know this tokenizer's pre-tokenizer (its probe hash is not one numprune knows); "
            "name llama.cpp's one with --tokenizer-pre (e.g. gpt-2, llama-bpe, smollm)"
        )
    tokens, types = token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    special.add_special_token["bos"] = adds_bos(tokenizer)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)
    return name
