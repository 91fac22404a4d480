"""Token-level perplexity over non-overlapping windows (the paper's protocol, not lm-eval's word perplexity)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from numprune.errors import NumpruneError


def window_nll(model: nn.Module, batch: Tensor) -> tuple[Tensor, int]:
    """Summed next-token NLL (float64) of a ``[B, seqlen]`` batch of windows and the number of predictions.

    The one per-batch computation behind ``perplexity`` and the Lightning evaluation loop.
    """
    logits = model(input_ids=batch, use_cache=False).logits.float()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
    return nll.double(), batch[:, 1:].numel()


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: Tensor,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, float | int]:
    """``exp(mean NLL)`` of every next-token prediction inside each window (``seqlen - 1`` per window).

    Returns ``ppl``, ``nll`` (mean), ``windows`` and ``tokens`` (predicted tokens).
    """
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)
        nll, n = window_nll(model, batch)
        if not torch.isfinite(nll):
            raise NumpruneError(f"non-finite loss on windows {start}..{start + len(batch) - 1}")
        total += float(nll)
        count += n
    model.train(was_training)
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "windows": int(windows.shape[0]), "tokens": count}
