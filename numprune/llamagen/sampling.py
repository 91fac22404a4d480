"""LlamaGen sampling: classifier-free guidance, temperature, top-k / top-p, KV cache; images, PNGs, ADM ``.npz``.

Follows the official ``generate.py`` / ``sample_c2i_ddp.py`` (LLAMAGEN.md §1.5):

- CFG runs the batch as ``[cond; null]`` (null class = ``num_classes``) and combines **raw** logits,
  ``uncond + (cond - uncond) * cfg_scale``, before temperature and filtering; the scale is constant, and
  ``cfg_interval >= 0`` switches guidance off (conditional logits only) once decode step ``i > cfg_interval``
  (decode steps count from 0 after the prefill token, which is always guided).
- one token per image is sampled and fed to both halves.
- images: VQ decode -> bicubic resize (no antialias) to ``eval_size`` -> ``clamp(127.5 x + 128, 0, 255)``
  truncated to uint8, NHWC.

Seeding: batch ``j`` of ``generate_images`` samples with ``torch.Generator(device).manual_seed(seed + j)``, so
results do not depend on how many batches ran before in the same process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from numprune.llamagen.gpt import LlamaGen
from numprune.llamagen.vq import VQModel


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to ``-inf`` (``top_k=0`` / ``top_p=1``:
    off); the most likely token always stays."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum > top_p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # keep the first token that crosses top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> Tensor:
    """``logits [B, V]`` -> token ids ``[B]``."""
    logits = filter_logits(logits / max(temperature, 1e-5), top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate_tokens(
    model: LlamaGen,
    classes: Tensor,
    *,
    cfg_scale: float = 1.0,
    cfg_interval: int = -1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    num_tokens: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Sample image tokens ``[B, num_tokens]`` (default: the whole grid) for class ids ``classes [B]``.

    ``use_cache=False`` recomputes the whole prefix at every step (slow; the oracle for the KV cache).
    """
    cfg = model.config
    device = model.output.weight.device
    classes = classes.to(device=device, dtype=torch.long)
    b, n = classes.shape[0], num_tokens or cfg.block_size
    guided = cfg_scale > 1.0
    rows = torch.cat([classes, torch.full_like(classes, cfg.num_classes)]) if guided else classes  # [B'] class ids
    gen = torch.Generator(device=device).manual_seed(seed)
    seq = rows[:, None]  # [B', 1 + t]: class token, then the sampled image tokens
    was_training = model.training
    model.eval()
    if use_cache:
        model.setup_caches(seq.shape[0], cfg.cls_token_num + n)
    try:
        for t in range(n):
            if use_cache:
                pos = torch.arange(seq.shape[1] - 1, seq.shape[1], device=device)  # prefill = the class token
                logits = model(seq[:, pos], pos)[:, -1]  # [B', V]
            else:
                logits = model(seq)[:, -1]
            if guided:
                cond, uncond = logits[:b], logits[b:]
                logits = uncond + (cond - uncond) * cfg_scale if (cfg_interval < 0 or t - 1 <= cfg_interval) else cond
            tok = sample_next(logits, temperature, top_k, top_p, gen)  # [B]
            seq = torch.cat([seq, torch.cat([tok, tok])[:, None] if guided else tok[:, None]], dim=1)
    finally:
        if use_cache:
            model.clear_caches()
        model.train(was_training)
    return seq[:b, 1:]


def tokens_to_images(vq: VQModel, tokens: Tensor, eval_size: int | None = 256) -> np.ndarray:
    """Image tokens ``[B, H*W]`` -> uint8 ``[B, S, S, 3]`` (decoded, bicubic-resized to ``eval_size``)."""
    with torch.no_grad():
        x = vq.decode_code(tokens.to(vq.post_quant_conv.weight.device)).float()  # [B, 3, 16H, 16W], ~[-1, 1]
        if eval_size is not None and x.shape[-1] != eval_size:
            x = F.interpolate(x, size=(eval_size, eval_size), mode="bicubic", align_corners=False)
        x = (127.5 * x + 128).clamp(0, 255).to(torch.uint8)  # truncation after +128 rounds
    return x.permute(0, 2, 3, 1).cpu().numpy()


def balanced_classes(per_class: int, num_classes: int = 1000, classes: Sequence[int] | None = None) -> Tensor:
    """``per_class`` copies of each class id (all ``num_classes``, or the given ``classes``), class-major."""
    ids = torch.as_tensor(list(classes) if classes is not None else range(num_classes), dtype=torch.long)
    return ids.repeat_interleave(per_class)


def generate_images(
    model: LlamaGen,
    vq: VQModel,
    classes: Sequence[int] | Tensor,
    *,
    batch_size: int = 32,
    cfg_scale: float = 1.75,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    cfg_interval: int = -1,
    seed: int = 0,
    eval_size: int | None = 256,
    out_dir: str | Path | None = None,
    npz_path: str | Path | None = None,
) -> np.ndarray:
    """Generate one image per class id; returns uint8 ``[N, S, S, 3]`` and optionally writes PNGs
    (``out_dir/000000.png`` ...) and an ADM-style ``.npz`` (``arr_0``). Defaults: FID protocol of the paper
    (top-k 0, top-p 1, temperature 1; XXL cfg 1.75, 3B cfg 1.65)."""
    classes = torch.as_tensor(classes, dtype=torch.long)
    images = []
    for j, start in enumerate(range(0, len(classes), batch_size)):
        toks = generate_tokens(
            model,
            classes[start : start + batch_size],
            cfg_scale=cfg_scale,
            cfg_interval=cfg_interval,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed + j,
        )
        images.append(tokens_to_images(vq, toks, eval_size))
    arr = np.concatenate(images) if images else np.zeros((0, eval_size or 0, eval_size or 0, 3), np.uint8)
    if out_dir is not None:
        save_pngs(arr, out_dir)
    if npz_path is not None:
        Path(npz_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz_path, arr_0=arr)
    return arr


def save_pngs(images: np.ndarray, out_dir: str | Path, start: int = 0) -> list[Path]:
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{start + i:06d}.png" for i in range(len(images))]
    for img, p in zip(images, paths):
        Image.fromarray(img).save(p)
    return paths


def calibration_tokens(
    model: LlamaGen,
    classes: Sequence[int] | Tensor,
    *,
    per_class: int = 128,
    batch_size: int = 32,
    cfg_scale: float = 1.75,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """Calibration rows for ``prune_`` from the model's own samples: ``[N, block_size]`` int64 rows
    ``[class_id, img_tok_0, ..., img_tok_{T-2}]`` (class token first, image tokens teacher-forced; the last
    token is dropped as in training, so a row has the model's full training length). ``N = per_class *
    len(classes)``; the paper uses 128 images per class."""
    ids = balanced_classes(per_class, classes=list(torch.as_tensor(classes).tolist()))
    rows = []
    for j, start in enumerate(range(0, len(ids), batch_size)):
        cls = ids[start : start + batch_size]
        toks = generate_tokens(
            model, cls, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed + j
        )
        rows.append(torch.cat([cls[:, None].to(toks.device), toks[:, :-1]], dim=1).cpu())
    return torch.cat(rows)
