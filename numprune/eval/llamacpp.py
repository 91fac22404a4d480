"""Run llama.cpp's own tools on an exported GGUF file: ``llama-perplexity`` and ``llama-bench``.

numprune does not build or ship llama.cpp: ``$NUMPRUNE_LLAMA_CPP`` names the folder with its binaries (a cmake
build's ``bin/``; docs/gguf.md says how to build one). ``perplexity(..., first=n_ctx // 2)`` on
``llamacpp_windows`` (numprune/eval/perplexity.py) is the same protocol computed by numprune on the HF model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from numprune.errors import NumpruneError

ENV = "NUMPRUNE_LLAMA_CPP"
_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)")


def llama_cpp_tool(name: str, bin_dir: str | os.PathLike | None = None) -> Path:
    """The path of llama.cpp's ``name`` binary in ``bin_dir`` (default ``$NUMPRUNE_LLAMA_CPP``)."""
    where = bin_dir or os.environ.get(ENV)
    if not where:
        raise NumpruneError(f"set {ENV} to the folder of llama.cpp's binaries (a cmake build's bin/)")
    tool = Path(where) / name
    if not tool.is_file():
        raise NumpruneError(f"{tool} does not exist: build llama.cpp's {name} target (docs/gguf.md)")
    return tool


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise NumpruneError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {' / '.join(tail)}")
    return proc.stdout + proc.stderr


def llama_perplexity(
    model: str | os.PathLike,
    text_file: str | os.PathLike,
    n_ctx: int,
    n_chunks: int,
    threads: int = 1,
    bin_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """``llama-perplexity``'s final estimate on the first ``n_chunks`` windows of ``n_ctx`` tokens of the file
    (it scores the second half of each window). Returns ``ppl``, ``ppl_stderr``, ``chunks``, ``n_ctx``."""
    cmd = [str(llama_cpp_tool("llama-perplexity", bin_dir)), "-m", str(model), "-f", str(text_file),
           "-c", str(n_ctx), "-b", str(n_ctx), "--chunks", str(n_chunks), "-t", str(threads)]  # fmt: skip
    out = _run(cmd)
    final, chunks = _FINAL.search(out), _CHUNKS.search(out)
    if final is None or chunks is None:
        raise NumpruneError(f"llama-perplexity printed no final estimate for {model}")
    return {"ppl": float(final.group(1)), "ppl_stderr": float(final.group(2)), "chunks": int(chunks.group(1)),
            "n_ctx": int(chunks.group(2))}  # fmt: skip


def llama_bench(
    models: list[str | os.PathLike],
    threads: int = 1,
    reps: int = 3,
    n_prompt: int = 128,
    n_gen: int = 32,
    bin_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """One ``llama-bench`` run over ``models`` (same threads, same process): a prompt (pp) and a generation (tg)
    test per model, each repeated ``reps`` times. Returns llama-bench's JSON records (``model_filename``,
    ``n_prompt``, ``n_gen``, ``avg_ts``, ``stddev_ts``, ``samples_ts``, ...)."""
    cmd = [str(llama_cpp_tool("llama-bench", bin_dir))]
    for m in models:
        cmd += ["-m", str(m)]
    cmd += ["-t", str(threads), "-r", str(reps), "-p", str(n_prompt), "-n", str(n_gen), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise NumpruneError(f"llama-bench failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)
