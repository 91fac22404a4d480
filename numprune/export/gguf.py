"""Write a (pruned) LLaMA-layout model as a GGUF file that llama.cpp runs: ``export_gguf``.

A model whose layers all kept the same counts is written as llama.cpp's ``llama`` architecture (what the stock
``convert_hf_to_gguf.py`` writes for the dense model); any other as ``deci``, whose per-layer ``head_count``,
``head_count_kv`` and ``feed_forward_length`` arrays carry numprune's per-layer shapes (``gguf_layout``). Which
module is which comes from the adapter; tensor names and keys from the ``gguf`` package. docs/gguf.md has the
measured agreement with the Hugging Face model in a real llama.cpp build.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import Tensor, nn

from numprune.adapters import get_adapter
from numprune.errors import NumpruneError
from numprune.export.gguf_layout import (
    DTYPES,
    FILE_TYPES,
    BlockEncoding,
    encode_layer,
    is_uniform,
    llama3_rope_factors,
    rope_permute,
    tensor_type,
)
from numprune.export.gguf_vocab import write_vocab

T = gguf.MODEL_TENSOR


def _name(kind: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=bid) + f".{suffix}"


def _check_exportable(model: nn.Module) -> Any:
    """The model's adapter, or one error line saying why GGUF cannot carry this model."""
    adapter = get_adapter(model)  # unknown architectures fail here
    cfg: Any = getattr(model, "config", None)
    if getattr(adapter, "gguf_architecture", None) != "llama":  # the adapter says which llama.cpp graph fits
        from numprune.adapters import hf_adapters

        ok = ", ".join(a.name for a in hf_adapters() if a.gguf_architecture == "llama")
        raise NumpruneError(
            f"GGUF export supports the LLaMA-layout families ({ok}); {adapter.name!r} has no llama.cpp "
            "architecture numprune writes"
        )
    if getattr(cfg, "residual_dims", None):
        raise NumpruneError("GGUF export: a sliced (SliceGPT) model has shortcut matrices llama.cpp has no place for")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise NumpruneError(f"GGUF export: llama.cpp's LLaMA graph uses SiLU, the model uses {cfg.hidden_act!r}")
    for layer in adapter.layers(model):
        if adapter.geometry(layer).qkv_bias or any(p.bias is not None for p in adapter.mlp_in(layer)):
            raise NumpruneError("GGUF export: q/k/v or gate/up biases are not written (no LLaMA model has them)")
        if any(part == "qkv" for _, part in adapter.attn_in(layer)):
            raise NumpruneError("GGUF export: fused qkv projections are not supported")
    return adapter


def _rope(cfg: Any) -> dict:
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise NumpruneError(f"GGUF export: RoPE scaling {kind!r} is not supported (default, linear, llama3 are)")
    return {**rope, "rope_type": kind}


def _write_hparams(w: gguf.GGUFWriter, cfg: Any, enc: list[BlockEncoding], uniform: bool, head_dim: int) -> None:
    w.add_block_count(len(enc))
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    if uniform:
        w.add_feed_forward_length(enc[0].n_ff)
        w.add_head_count(enc[0].n_head)
        w.add_head_count_kv(enc[0].n_head_kv)
    else:  # deci: one entry per layer
        w.add_feed_forward_length([e.n_ff for e in enc])
        w.add_head_count([e.n_head for e in enc])
        w.add_head_count_kv([e.n_head_kv for e in enc])
    rope = _rope(cfg)
    w.add_rope_freq_base(rope["rope_theta"])
    if rope["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    # explicit head size: otherwise llama.cpp derives it from layer 0's head count (hidden / n_head(0))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)


def _layer_tensors(adapter: Any, layer: nn.Module, i: int, e: BlockEncoding, hd: int) -> Iterator[tuple[str, Tensor]]:
    """The tensors of decoder layer ``i`` in llama.cpp's names and orientation (``[out, in]`` like torch)."""
    attn_norm, ffn_norm = adapter.norm_weights(layer)
    o_proj, down_proj = adapter.out_projections(layer)
    attn_bias, mlp_bias = adapter.output_biases(layer)
    hidden = attn_norm.numel()
    if e.attention != "absent":
        yield _name(T.ATTN_NORM, i), attn_norm
        if e.attention == "full":
            proj = {part: lin.weight for lin, part in adapter.attn_in(layer)}
            q, k = rope_permute(proj["q"], e.n_head), rope_permute(proj["k"], e.n_head_kv)
            v, o = proj["v"], o_proj.weight
        else:  # one head whose output projection is zero
            q = k = v = torch.zeros(hd, hidden)
            o = torch.zeros(hidden, hd)
        yield from ((_name(T.ATTN_Q, i), q), (_name(T.ATTN_K, i), k), (_name(T.ATTN_V, i), v))
        yield _name(T.ATTN_OUT, i), o
        if attn_bias is not None:
            yield _name(T.ATTN_OUT, i, "bias"), attn_bias
    if e.mlp != "absent":
        yield _name(T.FFN_NORM, i), ffn_norm
        if e.mlp == "full":
            gate, up = (lin.weight for lin in adapter.mlp_in(layer))
            down = down_proj.weight
        else:  # one channel whose down-projection is zero
            gate = up = torch.zeros(1, hidden)
            down = torch.zeros(hidden, 1)
        yield from ((_name(T.FFN_GATE, i), gate), (_name(T.FFN_UP, i), up), (_name(T.FFN_DOWN, i), down))
        if mlp_bias is not None:
            yield _name(T.FFN_DOWN, i, "bias"), mlp_bias


def _model_tensors(adapter: Any, model: nn.Module, enc: list[BlockEncoding], hd: int) -> Iterator[tuple[str, Tensor]]:
    emb, head = adapter.embedding(model).weight, adapter.lm_head(model).weight
    yield _name(T.TOKEN_EMBD), emb
    rope = _rope(model.config)
    if rope["rope_type"] == "llama3":
        yield _name(T.ROPE_FREQS), llama3_rope_factors(rope, hd)
    for i, layer in enumerate(adapter.layers(model)):
        yield from _layer_tensors(adapter, layer, i, enc[i], hd)
    yield _name(T.OUTPUT_NORM), adapter.final_norm_weight(model)
    if head.data_ptr() != emb.data_ptr():  # tied embeddings: llama.cpp reuses token_embd
        yield _name(T.OUTPUT), head


def _add_tensor(w: gguf.GGUFWriter, name: str, tensor: Tensor, dtype: str) -> gguf.GGMLQuantizationType:
    data = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
    qtype = tensor_type(tuple(data.shape), dtype)
    if qtype == gguf.GGMLQuantizationType.F32:
        w.add_tensor(name, data)
    elif qtype == gguf.GGMLQuantizationType.F16:
        w.add_tensor(name, data.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    return qtype


def _load(model: nn.Module | str | os.PathLike, tokenizer: Any) -> tuple[nn.Module, Any, Path | None]:
    """The model, its tokenizer and the folder of its tokenizer files (None: write them to a temporary one)."""
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise NumpruneError("export_gguf(model) needs the tokenizer (an object or its folder)")
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            return model, AutoTokenizer.from_pretrained(tokenizer), Path(tokenizer)
        return model, tokenizer, None
    from numprune.hub import load_model, resolve

    loaded, tok = load_model(str(model), dtype=torch.float32)
    return loaded, tokenizer or tok, Path(resolve(str(model)))


@torch.no_grad()
def export_gguf(
    model: nn.Module | str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "f32",
    tokenizer: Any = None,
    tokenizer_pre: str | None = None,
) -> dict[str, Any]:
    """Write ``model`` (a model folder, ``"smollm2"``, or a loaded model with its ``tokenizer``) to ``out``.

    ``dtype``: ``f32``, ``f16``, ``bf16`` or ``q8_0`` for the matrices (vectors stay F32; Q8_0 falls back to F16
    for rows that are not whole 32-element blocks). ``tokenizer_pre``: llama.cpp's pre-tokenizer name when
    numprune does not recognise the tokenizer. Returns a summary: ``architecture``, per-layer ``head_count``,
    ``head_count_kv``, ``feed_forward_length`` as written, ``tensor_types`` (type name -> count), ``bytes``.
    The file appears only when complete.
    """
    if dtype not in DTYPES:
        raise NumpruneError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    model, tok, folder = _load(model, tokenizer)
    adapter = _check_exportable(model)
    layers = adapter.layers(model)
    geos = [adapter.geometry(layer) for layer in layers]
    biases = [adapter.output_biases(layer) for layer in layers]
    enc = [encode_layer(g, i, a is not None, m is not None) for i, (g, (a, m)) in enumerate(zip(geos, biases))]
    uniform = is_uniform(enc, geos, any(b is not None for pair in biases for b in pair))
    cfg: Any = model.config
    hd: int = next((g.head_dim for g in geos if g.head_dim), None) or getattr(cfg, "head_dim", None) or 0
    hd = hd or cfg.hidden_size // cfg.num_attention_heads
    arch = "llama" if uniform else "deci"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_name(Path(str(getattr(cfg, "_name_or_path", "") or "numprune")).name or "numprune")
        writer.add_file_type(FILE_TYPES[dtype])
        if dtype in ("q8_0", "bf16"):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_hparams(writer, cfg, enc, uniform, hd)
        vocab = adapter.embedding(model).weight.shape[0]
        writer.add_vocab_size(vocab)
        with tempfile.TemporaryDirectory() as spare:
            if folder is None:
                tok.save_pretrained(spare)
            write_vocab(writer, tok, folder or Path(spare), vocab, tokenizer_pre)
        types: dict[str, int] = {}
        for name, tensor in _model_tensors(adapter, model, enc, hd):
            qtype = _add_tensor(writer, name, tensor, dtype)
            types[qtype.name] = types.get(qtype.name, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return {
        "architecture": arch,
        "head_count": [e.n_head for e in enc],
        "head_count_kv": [e.n_head_kv for e in enc],
        "feed_forward_length": [e.n_ff for e in enc],
        "tensor_types": types,
        "bytes": out.stat().st_size,
    }
