"""Text corpora for calibration and perplexity: from a local data directory or the Hugging Face hub.

A dataset is named ``NAME[:SPLIT]`` (``wikitext2``, ``ptb``, ``c4``) or is a path to a UTF-8 text file. Local
files are looked up under ``--data-dir`` / ``$NUMPRUNE_DATA_DIR`` with the names of ``shared/data``:
``wikitext2/wiki.{test,valid,train}.raw`` (or the tokenized ``wiki.valid.tokens``), ``ptb/ptb.{test,valid,train}.txt``,
``c4/c4-{validation,train}.*.json[.gz]``. Every loader returns where the text came from, for the results row.

Protocols (GPTQ / the paper): WikiText-2 from the hub is its rows joined with ``"\\n\\n"``; a local WikiText-2
file (or any text file) is read as it is: ``shared/data/wikitext2/wiki.test.raw`` is the split's text as shipped,
and the reference SmolLM2 numbers (dense 37.5 on 16 x 256 windows) were measured on it. The two sources differ
by about 1% in perplexity; the results row records which one was used. PTB: sentences joined with ``" "``.
C4: documents from which seeded random windows are drawn.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from numprune.errors import NumpruneError

DEFAULT_SPLIT = {"wikitext2": "test", "ptb": "test", "c4": "validation"}
_SPLIT_ALIASES = {"valid": "validation", "val": "validation"}
_LOCAL = {
    ("wikitext2", "test"): ["wikitext2/wiki.test.raw"],
    ("wikitext2", "validation"): ["wikitext2/wiki.valid.raw", "wikitext2/wiki.valid.tokens"],
    ("wikitext2", "train"): ["wikitext2/wiki.train.raw", "wikitext2/wiki.train.tokens"],
    ("ptb", "test"): ["ptb/ptb.test.txt"],
    ("ptb", "validation"): ["ptb/ptb.valid.txt"],
    ("ptb", "train"): ["ptb/ptb.train.txt"],
}


@dataclass(frozen=True)
class Corpus:
    """Text of one dataset split: one joined string, or documents (C4)."""

    name: str
    split: str
    source: str  # "local:<path in the data dir>#<sha256 prefix>", "file:<name>#<sha256 prefix>" or "hub:<id>"
    text: str | None = None
    documents: list[str] | None = None


def _text(corpus: Corpus) -> str:
    if corpus.text is None:
        raise NumpruneError(f"{corpus.name}:{corpus.split} has documents, not one text")
    return corpus.text


def data_dir(explicit: str | Path | None = None) -> Path | None:
    value = explicit or os.environ.get("NUMPRUNE_DATA_DIR")
    return Path(value) if value else None


def parse_name(spec: str, default_split: str | None = None) -> tuple[str, str]:
    """``"wikitext2:validation"`` -> ``("wikitext2", "validation")``; a file path -> ``(path, "file")``."""
    if Path(spec).is_file():
        return spec, "file"
    name, _, split = spec.partition(":")
    if name not in DEFAULT_SPLIT:
        raise NumpruneError(f"unknown dataset {spec!r}: use wikitext2, ptb, c4 (optionally :split) or a text file path")
    split = _SPLIT_ALIASES.get(split, split) or default_split or DEFAULT_SPLIT[name]
    if split not in ("train", "validation", "test"):
        raise NumpruneError(f"unknown split {split!r} of {name}")
    if name == "c4" and split == "test":
        raise NumpruneError("C4 has no test split; use c4:validation")
    return name, split


def _sentences(path: Path) -> str:
    return " ".join(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _local_c4(root: Path, split: str) -> Path | None:
    hits = sorted((root / "c4").glob(f"c4-{split}*.json*")) if (root / "c4").is_dir() else []
    return hits[0] if hits else None


def _read_jsonl(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached now (``HF_HUB_OFFLINE=1`` or no network: at once False)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub(name: str, split: str) -> Corpus:
    if not hub_reachable():  # the datasets library would retry for ~40 s before failing
        raise NumpruneError(
            f"{name}:{split} is not in the local data directory and the hub is offline or unreachable; set "
            f"--data-dir / NUMPRUNE_DATA_DIR to a folder with the files, or pass a text file path"
        )
    try:
        import datasets

        if name == "wikitext2":
            rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
            return Corpus(name, split, "hub:wikitext/wikitext-2-raw-v1", text="\n\n".join(rows))
        if name == "ptb":
            rows = datasets.load_dataset("ptb_text_only", "penn_treebank", split=split)["sentence"]
            return Corpus(name, split, "hub:ptb_text_only", text=" ".join(rows))
        shard = f"en/c4-{split}.00000-of-{'00008' if split == 'validation' else '01024'}.json.gz"
        rows = datasets.load_dataset("allenai/c4", data_files={split: shard}, split=split)["text"]
        return Corpus(name, split, f"hub:allenai/c4/{shard}", documents=list(rows))
    except Exception as err:  # offline, missing dataset, ...: one clear line
        raise NumpruneError(
            f"{name}:{split} is not in the local data directory and could not be loaded from the hub "
            f"({type(err).__name__}); set --data-dir / NUMPRUNE_DATA_DIR to a folder with the files, "
            f"or pass a text file path"
        ) from None


def load_corpus(spec: str, root: str | Path | None = None, default_split: str | None = None) -> Corpus:
    """Load ``NAME[:SPLIT]`` or a text file, preferring local files."""
    name, split = parse_name(spec, default_split)
    if split == "file":
        path = Path(name)
        return Corpus(
            path.name, "file", f"file:{path.name}#{_fingerprint(path)}", text=path.read_text(encoding="utf-8")
        )
    base = data_dir(root)
    if base is not None:
        if name == "c4":
            c4 = _local_c4(base, split)
            if c4 is not None:
                source = f"local:{c4.relative_to(base)}#{_fingerprint(c4)}"
                return Corpus(name, split, source, documents=_read_jsonl(c4))
        for rel in _LOCAL.get((name, split), []):
            path = base / rel
            if path.exists():
                text = _sentences(path) if name == "ptb" else path.read_text(encoding="utf-8")
                return Corpus(name, split, f"local:{rel}#{_fingerprint(path)}", text=text)
    return _hub(name, split)


def tokenize(tokenizer, text: str) -> Tensor:
    """Token ids of a text without special tokens (so perplexities compare across transformers versions)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def bos_token(tokenizer) -> int | None:
    """The BOS id every window starts with, or None: the model's own policy, read from its tokenizer (does it
    prepend ``bos_token_id`` to a text?). Gemma 3 does, and needs it (WikiText-2 8 x 512: perplexity 53 without
    BOS, 23 with); SmolLM2's tokenizer in transformers 5 does not (its reference numbers have none)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    return bos if tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos] else None


def _with_bos(windows: Tensor, bos: int | None) -> Tensor:
    """``[W, L - 1]`` text windows -> ``[W, L]`` windows that start with BOS (unchanged without one)."""
    return windows if bos is None else torch.cat([torch.full_like(windows[:, :1], bos), windows], dim=1)


def _random_windows(docs: list[Tensor], n: int, seqlen: int, seed: int) -> Tensor:
    """``n`` windows of ``seqlen`` tokens at seeded random positions of randomly chosen long-enough docs."""
    long_enough = [d for d in docs if d.numel() > seqlen]
    if not long_enough:
        longest = max((d.numel() for d in docs), default=0)
        raise NumpruneError(f"the text has {longest} tokens, too short for windows of {seqlen} tokens")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        doc = long_enough[int(torch.randint(len(long_enough), (1,), generator=gen))]
        start = int(torch.randint(doc.numel() - seqlen, (1,), generator=gen))
        out.append(doc[start : start + seqlen])
    return torch.stack(out)


def calibration_windows(corpus: Corpus, tokenizer, nsamples: int, seqlen: int, seed: int = 0) -> Tensor:
    """``[nsamples, seqlen]`` random windows (the paper's 128 x 2048 from WikiText-2 train), seeded; with the
    tokenizer's BOS (``bos_token``) each window is BOS + ``seqlen - 1`` text tokens."""
    if nsamples < 1 or seqlen < 2:
        raise NumpruneError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples} x {seqlen}")
    docs = (
        [tokenize(tokenizer, d) for d in corpus.documents] if corpus.documents else [tokenize(tokenizer, _text(corpus))]
    )
    bos = bos_token(tokenizer)
    return _with_bos(_random_windows(docs, nsamples, seqlen - (bos is not None), seed), bos)


def eval_windows(
    corpus: Corpus, tokenizer, seqlen: int, max_windows: int | None = None, c4_windows: int = 256, seed: int = 0
) -> Tensor:
    """Non-overlapping ``[W, seqlen]`` windows of the joined text (C4: ``c4_windows`` seeded random windows); with
    the tokenizer's BOS each window is BOS + the next ``seqlen - 1`` text tokens (every text token is scored once,
    the first one of a window from BOS)."""
    bos = bos_token(tokenizer)
    text_len = seqlen - (bos is not None)
    if corpus.documents is not None:
        docs = [tokenize(tokenizer, d) for d in corpus.documents[:3000]]
        windows = _random_windows(docs, c4_windows, text_len, seed)
    else:
        ids = tokenize(tokenizer, _text(corpus))
        n = ids.numel() // text_len
        if n == 0:
            raise NumpruneError(f"{corpus.name} has {ids.numel()} tokens, fewer than one window of {seqlen}")
        windows = ids[: n * text_len].reshape(n, text_len)
    return _with_bos(windows[:max_windows] if max_windows else windows, bos)
