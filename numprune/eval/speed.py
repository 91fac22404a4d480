"""Generation speed and memory of dense and pruned models (paper Figure 5), and the bandwidth limit.

Decode at small batch reads every weight once per step, so its speed is bounded by memory bandwidth: a pruned
model cannot decode faster than ``bytes read per token (dense) / bytes read per token (pruned)``. We measure
time to first token (prefill + first token), decode tokens/s and peak memory with a plain greedy KV-cache loop
(what ``generate`` does, without its bookkeeping), and report the measured speedup against that limit.
"""

from __future__ import annotations

import inspect
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# LLaMA-7B (Touvron et al. 2023): the paper's Figure 5 model.
CONFIGS: dict[str, dict[str, Any]] = {
    "llama-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512),
}  # fmt: skip


@dataclass
class SpeedResult:
    """Medians over repetitions; ``decode_tokens_per_s`` counts tokens of all sequences in the batch."""

    batch: int
    prompt_len: int
    new_tokens: int
    reps: int
    ttft_s: float
    decode_tokens_per_s: float
    peak_mem_gib: float
    mem_kind: str  # "device" (max allocated on the GPU) or "rss" (peak resident set of the process)
    weights_gib: float
    bytes_per_token: float  # bytes read per decode step / batch (decode_bytes_per_step)
    decode_all: list[float]
    ttft_all: list[float]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_peak_reset() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_peak_gib() -> float:
    status = Path("/proc/self/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+)", status)
    if found is None:
        raise RuntimeError("/proc/self/status has no VmHWM line")
    return int(found.group(1)) / 2**20  # kB -> GiB


def weight_bytes(model: nn.Module) -> int:
    from numprune.provenance import unique_parameters

    return sum(p.numel() * p.element_size() for p in unique_parameters(model))


def attn_mlp_params(model: nn.Module) -> int:
    """Parameters of the attention and MLP projections (what a pruning ratio is a fraction of)."""
    from numprune.adapters import get_adapter

    adapter = get_adapter(model)
    return sum(g.attention_params + g.mlp_params for g in map(adapter.geometry, adapter.layers(model)))


def decode_bytes_per_step(model: Any, batch: int, context: int) -> float:
    """Bytes one decode step must read: every weight once (the input embedding only one row per sequence; a
    tied lm_head still reads the whole matrix) plus each sequence's KV cache of ``context`` positions."""
    emb = model.get_input_embeddings().weight
    tied = emb is model.get_output_embeddings().weight
    weights = weight_bytes(model) - (0 if tied else emb.numel() * emb.element_size())
    weights += batch * emb.shape[1] * emb.element_size()
    from numprune.adapters import get_adapter

    adapter = get_adapter(model)
    kv = sum(adapter.geometry(layer).kv_cache_per_token for layer in adapter.layers(model)) * emb.element_size()
    return float(weights + batch * context * kv)


def limit_speedup(dense: float, pruned: float) -> float:
    """Upper bound on decode speedup when decode is bandwidth-bound: the ratio of bytes read per step."""
    return dense / pruned


def _cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def time_generation(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float, torch.Tensor]:
    """Greedy generation of ``new_tokens`` after ``prompt`` [B, L].

    Returns (time to first token in s, decode tokens/s over all sequences, generated ids [B, new_tokens]).
    """
    device = prompt.device
    # transformers 5.x renamed ``past_key_values`` to ``cache``; accept both.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(input_ids=tokens[-1], use_cache=True, **{cache_arg: _cache(out)})
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, prompt.shape[0] * (new_tokens - 1) / (t2 - t1), torch.cat(tokens, dim=1)


def measure(
    model: Any,
    batch: int,
    *,
    prompt_len: int = 64,
    new_tokens: int = 32,
    reps: int = 3,
    warmup: int = 1,
    seed: int = 0,
) -> SpeedResult:
    """Median time to first token, decode tokens/s and peak memory over ``reps`` runs (after ``warmup``)."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 (one prefill token and at least one decode step)")
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=gen).to(device)
    model.eval()
    for _ in range(warmup):
        time_generation(model, prompt, new_tokens)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss_peak_reset()
    runs = [time_generation(model, prompt, new_tokens)[:2] for _ in range(reps)]
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**30, "device"
    else:
        peak, kind = rss_peak_gib(), "rss"
    ttft, tps = [r[0] for r in runs], [r[1] for r in runs]
    context = prompt_len + new_tokens // 2  # mean KV length over the decode steps
    return SpeedResult(batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, reps=reps,
                       ttft_s=statistics.median(ttft), decode_tokens_per_s=statistics.median(tps),
                       peak_mem_gib=peak, mem_kind=kind, weights_gib=weight_bytes(model) / 2**30,
                       bytes_per_token=decode_bytes_per_step(model, batch, context) / batch,
                       decode_all=tps, ttft_all=ttft)  # fmt: skip


def paired_decode(
    model: nn.Module, dense: str, *, prompt_len: int = 64, new_tokens: int = 32, reps: int = 3, seed: int = 0
) -> dict[str, float]:
    """Decode tokens/s of ``model`` and of the dense model ``dense`` (an alias or folder for
    ``numprune.hub.load_model``) at batch 1, measured alternately in this process (dense, pruned, dense, ...)
    so that both see the same machine load; the evaluator ``numprune.eval.speed.paired_decode``."""
    from numprune.hub import load_model

    ref, _ = load_model(dense, dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)
    pruned_tps: list[float] = []
    dense_tps: list[float] = []
    for _ in range(reps):
        for m, out in ((ref, dense_tps), (model, pruned_tps)):
            out.append(
                measure(m, 1, prompt_len=prompt_len, new_tokens=new_tokens, reps=1, seed=seed).decode_tokens_per_s
            )
    del ref
    pruned, base = statistics.median(pruned_tps), statistics.median(dense_tps)
    return {"decode_tokens_per_s": pruned, "dense_decode_tokens_per_s": base, "decode_speedup": pruned / base}


def _kept_widths(total: int, keep: float, layers: int, round_to: int, jitter: float, seed: int) -> list[int]:
    """Per-layer kept MLP widths averaging ``keep * total``; jittered like a global ranking's uneven
    allocation, then rounded to ``round_to`` (the paper's plans are not uniform, and alignment is the point)."""
    gen = torch.Generator().manual_seed(seed)
    noise = (torch.rand(layers, generator=gen) * 2 - 1) * jitter
    noise -= noise.mean()
    widths = ((keep + noise * keep) * total).round().clamp(1, total)
    if round_to > 1:
        widths = (widths / round_to).round().clamp(min=1) * round_to
    return [int(w) for w in widths.clamp(max=total)]


def random_pruned_llama(
    name: str,
    ratio: float,
    *,
    round_to: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    jitter: float = 0.2,
    seed: int = 0,
) -> nn.Module:
    """A randomly initialised model of a named shape (``CONFIGS``) with ``ratio`` of its attention+MLP
    parameters removed: speed depends on the shapes only, so no weights are downloaded or pruned.

    Heads are removed uniformly per layer; the MLP widths then make up the parameter budget (see
    ``_kept_widths``). ``ratio=0`` gives the dense model.
    """
    from numprune.adapters.base import LayerGeometry
    from numprune.pruned_model import NumprunedLlamaConfig, NumprunedLlamaForCausalLM

    base = CONFIGS[name]
    h, i, d, n = base["num_attention_heads"], base["intermediate_size"], base["hidden_size"], base["num_hidden_layers"]
    kv, hd = base["num_key_value_heads"], d // h
    group = h // kv
    keep_kv = max(1, round(kv * (1 - ratio)))
    geo = LayerGeometry(hidden=d, num_heads=h, num_kv_heads=kv, head_dim=hd, intermediate=i)
    attn_unit, chan = group * geo.query_head_params + geo.kv_head_params, geo.channel_params  # a KV group; a channel
    budget = (1 - ratio) * (geo.attention_params + geo.mlp_params) - keep_kv * attn_unit
    keep_mlp = min(max(budget / chan, 1.0), i) / i
    widths = _kept_widths(i, keep_mlp, n, round_to, jitter if ratio > 0 else 0.0, seed)
    cfg = NumprunedLlamaConfig(**base, head_dim=hd, tie_word_embeddings=False, layer_num_heads=[keep_kv * group] * n,
                               layer_num_kv_heads=[keep_kv] * n, layer_intermediate_sizes=widths)  # fmt: skip
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = NumprunedLlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if p.ndim > 1 else p.fill_(1.0)  # defined values, no NaNs from empty memory
    return model.eval()


def plot_speed(csv_path: str | Path, png_path: str | Path) -> Path:
    """Figure 5 style: decode tokens/s (bars with min-max whiskers, left axis) and peak memory (line, right
    axis) vs pruning ratio; one panel per (model, device, dtype, batch), rounded and unrounded plans side by side.
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    df = df[df["experiment"] == "speed"].copy()
    opts = df["options"].map(json.loads)
    for key in ("batch", "round_to", "device", "dtype"):
        df[key] = opts.map(lambda o, k=key: o.get(k))
    keys = ["model", "device", "dtype", "batch"]
    panels = sorted(df.groupby(keys).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        sub = df[(df[keys] == pd.Series(key, index=keys)).all(axis=1)]
        ratios, rounds = sorted(sub["ratio"].unique()), sorted(sub["round_to"].unique())
        width = 0.8 / len(rounds)
        ax2 = ax.twinx()
        for j, r in enumerate(rounds):
            part = sub[sub["round_to"] == r]

            def metric(name: str, part=part) -> pd.Series:
                return part[part["metric"] == name].set_index("ratio")["value"]

            tps, mem = metric("decode_tokens_per_s"), metric("peak_mem_gib")
            lo, hi = metric("decode_tokens_per_s_min"), metric("decode_tokens_per_s_max")
            xs = [ratios.index(x) + (j - (len(rounds) - 1) / 2) * width for x in tps.index]
            err = [(tps - lo.reindex(tps.index)).values, (hi.reindex(tps.index) - tps).values]
            ax.bar(xs, tps.values, width=width, yerr=err, capsize=3, alpha=0.8, label=f"tokens/s, round_to={r}")
            ax2.plot([ratios.index(x) for x in mem.index], mem.values, marker="o", label=f"memory, round_to={r}")
        ax.set_xticks(range(len(ratios)), [f"{round(100 * x)}%" for x in ratios])
        ax.set_xlabel("pruned fraction of attention+MLP parameters")
        ax.set_ylabel("decode tokens/s (median; whiskers min-max)")
        ax2.set_ylabel(("GPU memory, max allocated" if key[1].startswith("cuda") else "peak RSS") + " (GiB)")
        ax.set_title(f"{key[0]}, {key[1]} {key[2]}, batch {key[3]}")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
