"""Token-level perplexity over non-overlapping windows (the paper's protocol, not lm-eval's word perplexity),
and llama.cpp's variant of it (``llama-perplexity``: only the second half of each window is scored)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from numprune.errors import NumpruneError


def window_nll(model: nn.Module, batch: Tensor, first: int = 0) -> tuple[Tensor, int]:
    """Summed next-token NLL (float64) of a ``[B, seqlen]`` batch of windows and the number of predictions:
    the tokens after position ``first`` of each window (``first=0``: every prediction, ``seqlen - 1``).

    The one per-batch computation behind ``perplexity`` and the Lightning evaluation loop.
    """
    logits = model(input_ids=batch, use_cache=False).logits[:, first:-1].float()
    target = batch[:, first + 1 :]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
    return nll.double(), target.numel()


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: Tensor,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: bool = True,
    first: int = 0,
) -> dict[str, float | int]:
    """``exp(mean NLL)`` of the next-token predictions inside each window after position ``first``
    (``seqlen - 1 - first`` per window; ``first = seqlen // 2`` is llama.cpp's protocol, ``llamacpp_windows``).

    Returns ``ppl``, ``nll`` (mean), ``windows`` and ``tokens`` (predicted tokens).
    """
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)
        nll, n = window_nll(model, batch, first)
        if not torch.isfinite(nll):
            raise NumpruneError(f"non-finite loss on windows {start}..{start + len(batch) - 1}")
        total += float(nll)
        count += n
    model.train(was_training)
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "windows": int(windows.shape[0]), "tokens": count}


def llamacpp_windows(tokens: Tensor, n_ctx: int, n_chunks: int | None = None, bos_id: int | None = None) -> Tensor:
    """``llama-perplexity``'s chunks of a token stream (the whole text tokenized once, with BOS if the model adds
    one): consecutive ``n_ctx``-token windows, at most ``n_chunks``, each starting with ``bos_id`` in place of
    its first token when given. Score them with ``perplexity(model, windows, first=n_ctx // 2)``: llama.cpp
    scores the predictions of tokens ``n_ctx//2 + 1 .. n_ctx - 1``, each seen with at least half a window of
    context (``tools/perplexity/perplexity.cpp``)."""
    if tokens.numel() < 2 * n_ctx:
        raise NumpruneError(f"llama.cpp's protocol needs at least {2 * n_ctx} tokens, the text has {tokens.numel()}")
    count = tokens.numel() // n_ctx if n_chunks is None else min(n_chunks, tokens.numel() // n_ctx)
    windows = tokens[: count * n_ctx].reshape(count, n_ctx).clone()
    if bos_id is not None:
        windows[:, 0] = bos_id
    return windows


def llamacpp_perplexity(
    model: nn.Module, tokenizer, text: str, n_ctx: int, n_chunks: int | None = None, progress: bool = False
) -> dict[str, float | int]:
    """numprune's evaluation of ``model`` with ``llama-perplexity``'s protocol on ``text``: tokenized whole (BOS
    first when the tokenizer adds one, as the exported GGUF's ``add_bos_token`` says), ``llamacpp_windows``,
    the second half of each window scored. Same keys as ``perplexity``."""
    ids = torch.tensor(tokenizer(text).input_ids)
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and ids[:1].tolist() == [bos]
    windows = llamacpp_windows(ids, n_ctx, n_chunks, bos if adds_bos else None)
    return perplexity(model, windows, progress=progress, first=n_ctx // 2)
