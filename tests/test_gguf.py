"""GGUF export: read back with gguf.GGUFReader (architecture, per-layer arrays, every tensor, tokenizer), and a
NumPy forward that follows llama.cpp's LLaMA/deci graph on the file gives the Hugging Face logits."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from numprune import NumpruneError, export_gguf, prune_, save_pruned
from numprune.adapters import get_adapter
from numprune.cli import main
from numprune.eval.perplexity import llamacpp_windows, perplexity
from numprune.export.gguf_layout import encode_layer, rope_permute, tensor_type
from numprune.export.gguf_vocab import adds_bos

torch.set_num_threads(1)
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The SmolLM2 tokenizer (a real byte-level BPE one llama.cpp knows), from numprune's model cache."""
    from transformers import AutoTokenizer

    from numprune.hub import smollm2_path

    try:
        path = smollm2_path()
    except NumpruneError as err:
        pytest.skip(f"SmolLM2 not available offline: {err}")
    return AutoTokenizer.from_pretrained(path), path


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer of 300 tokens trained here (offline, and a file llama.cpp reads quickly);
    its pre-tokenizer is GPT-2's, which numprune cannot recognise from the probe hash: it is named explicitly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=SMALL_VOCAB, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tk.train_from_iterator(["the cat sat on the mat; the dog ate the hat. 0123 456 789 " * 20], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>")
    path = tmp_path_factory.mktemp("small_tokenizer")
    tok.save_pretrained(path)
    return tok, path


SMALL_VOCAB = 300


def tiny_llama(kv_heads: int, vocab: int = 49152, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                      tie_word_embeddings=True, rope_theta=10000.0)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # spread channel scales so that pruning scores differ from layer to layer
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(torch.rand(p.shape[0], 1) * 2 + 0.2)
    return model


def pruned_llama(kv_heads: int, vocab: int = SMALL_VOCAB) -> LlamaForCausalLM:
    model = tiny_llama(kv_heads, vocab)
    calib = torch.randint(0, vocab, (8, 32), generator=torch.Generator().manual_seed(1))
    prune_(model, ratio=0.4, calibration=calib, progress=False)
    return model


def fields(path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def gguf_forward(path, ids: list[int]) -> torch.Tensor:
    """Logits of llama.cpp's LLaMA / deci graph (src/models/deci.cpp) computed from an F32 file: interleaved
    RoPE, per-layer counts, ``n_head == 0``: no attention, ``n_ff == 0``: the rest of the layer is skipped."""
    kv, tensors = fields(path)
    w = {n: torch.from_numpy(np.array(t.data, dtype=np.float32)) for n, t in tensors.items()}
    arch = kv["general.architecture"]
    n_layer, hd = kv[f"{arch}.block_count"], kv[f"{arch}.attention.key_length"]
    eps, theta = kv[f"{arch}.attention.layer_norm_rms_epsilon"], kv[f"{arch}.rope.freq_base"]

    def per_layer(key):
        v = kv[f"{arch}.{key}"]
        return v if isinstance(v, list) else [v] * n_layer

    heads, kvs, ffs = per_layer("attention.head_count"), per_layer("attention.head_count_kv"), per_layer(
        "feed_forward_length")  # fmt: skip

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    T = len(ids)
    pos = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    cos, sin = pos.cos().float()[:, None], pos.sin().float()[:, None]  # [T, 1, hd/2]

    def rope(x):  # x [T, n, hd], pairs (2j, 2j+1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(x.shape)

    x = w["token_embd.weight"][torch.tensor(ids)]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(n_layer):
        b = f"blk.{i}."
        cur = x
        if heads[i] > 0:
            h = rms(x, w[b + "attn_norm.weight"])
            q = rope((h @ w[b + "attn_q.weight"].T).view(T, heads[i], hd))
            k = rope((h @ w[b + "attn_k.weight"].T).view(T, kvs[i], hd)).repeat_interleave(heads[i] // kvs[i], 1)
            v = (h @ w[b + "attn_v.weight"].T).view(T, kvs[i], hd).repeat_interleave(heads[i] // kvs[i], 1)
            att = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / hd**0.5 + mask, -1)
            cur = torch.einsum("hqk,khd->qhd", att, v).reshape(T, -1) @ w[b + "attn_output.weight"].T
            cur = cur + w.get(b + "attn_output.bias", 0) + x
        if ffs[i] == 0:
            continue  # llama.cpp drops the layer's update: x stays
        h = rms(cur, w[b + "ffn_norm.weight"])
        y = torch.nn.functional.silu(h @ w[b + "ffn_gate.weight"].T) * (h @ w[b + "ffn_up.weight"].T)
        x = y @ w[b + "ffn_down.weight"].T + w.get(b + "ffn_down.bias", 0) + cur
    return rms(x, w["output_norm.weight"]) @ w.get("output.weight", w["token_embd.weight"]).T


def hf_tensor_shapes(model) -> dict[str, tuple[int, ...]]:
    """The expected tensors and their GGUF shapes (ne: torch's shape reversed) from the model's own geometry."""
    adapter = get_adapter(model)
    hidden = model.config.hidden_size
    out = {"token_embd.weight": (hidden, model.config.vocab_size), "output_norm.weight": (hidden,)}
    for i, layer in enumerate(adapter.layers(model)):
        geo = adapter.geometry(layer)
        e = encode_layer(geo, i, False, False)
        hd, b = 16, f"blk.{i}."
        if e.attention != "absent":
            out |= {b + "attn_norm.weight": (hidden,), b + "attn_q.weight": (hidden, e.n_head * hd),
                    b + "attn_k.weight": (hidden, e.n_head_kv * hd), b + "attn_v.weight": (hidden, e.n_head_kv * hd),
                    b + "attn_output.weight": (e.n_head * hd, hidden)}  # fmt: skip
        if e.mlp != "absent":
            out |= {b + "ffn_norm.weight": (hidden,), b + "ffn_gate.weight": (hidden, e.n_ff),
                    b + "ffn_up.weight": (hidden, e.n_ff), b + "ffn_down.weight": (e.n_ff, hidden)}  # fmt: skip
    return out


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_uniform_model_is_llama(tmp_path, small_tokenizer, kv_heads):
    model = tiny_llama(kv_heads, SMALL_VOCAB)
    summary = export_gguf(model, tmp_path / "m.gguf", tokenizer=small_tokenizer[1], tokenizer_pre="gpt-2")
    kv, tensors = fields(tmp_path / "m.gguf")
    assert summary["architecture"] == kv["general.architecture"] == "llama"
    assert (kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]) == (4, kv_heads)
    assert kv["llama.feed_forward_length"] == 96 and kv["llama.block_count"] == 3
    assert kv["llama.attention.key_length"] == kv["llama.rope.dimension_count"] == 16
    assert {n: tuple(int(d) for d in t.shape) for n, t in tensors.items()} == hf_tensor_shapes(model)
    assert {t.tensor_type for t in tensors.values()} == {Q.F32} and kv["general.file_type"] == 0
    assert kv["tokenizer.ggml.pre"] == "gpt-2" and len(kv["tokenizer.ggml.tokens"]) == SMALL_VOCAB
    # q/k rows are in llama.cpp's interleaved RoPE order, v as is
    attn = model.model.layers[1].self_attn
    q, k = np.array(tensors["blk.1.attn_q.weight"].data), np.array(tensors["blk.1.attn_k.weight"].data)
    assert np.array_equal(q, rope_permute(attn.q_proj.weight, 4).detach().numpy())
    assert np.array_equal(k, rope_permute(attn.k_proj.weight, kv_heads).detach().numpy())
    assert not np.array_equal(q, attn.q_proj.weight.detach().numpy())
    assert np.array_equal(np.array(tensors["blk.1.attn_v.weight"].data), attn.v_proj.weight.detach().numpy())
    ids = [5, 90, 17, 230, 4, 4, 31]
    expect = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(gguf_forward(tmp_path / "m.gguf", ids), expect, rtol=1e-4, atol=1e-4)


def test_smollm2_tokenizer_is_carried_over(tmp_path, smollm2_tokenizer):
    tok, folder = smollm2_tokenizer
    export_gguf(tiny_llama(2, 49152), tmp_path / "m.gguf", tokenizer=folder)
    kv, _ = fields(tmp_path / "m.gguf")
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "smollm"  # from the probe hash
    vocab = tok.get_vocab()
    assert len(kv["tokenizer.ggml.tokens"]) == 49152
    assert all(kv["tokenizer.ggml.tokens"][i] == t for t, i in vocab.items())
    assert kv["tokenizer.ggml.token_type"][tok.convert_tokens_to_ids("<|im_start|>")] == gguf.TokenType.CONTROL
    assert kv["tokenizer.ggml.token_type"][vocab["hello"]] == gguf.TokenType.NORMAL
    merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
    assert len(kv["tokenizer.ggml.merges"]) == len(merges) > 1000
    assert kv["tokenizer.ggml.bos_token_id"] == tok.bos_token_id and kv["tokenizer.ggml.eos_token_id"] == 2
    assert kv["tokenizer.ggml.add_bos_token"] is adds_bos(tok) is False  # SmolLM2 encodes text without BOS
    assert kv["tokenizer.chat_template"] == (folder / "chat_template.jinja").read_text()


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_pruned_model_is_deci_with_per_layer_arrays(tmp_path, small_tokenizer, kv_heads):
    tok, _ = small_tokenizer
    model = pruned_llama(kv_heads)
    adapter = get_adapter(model)
    geos = [adapter.geometry(layer) for layer in adapter.layers(model)]
    assert len({(g.num_heads, g.num_kv_heads, g.intermediate) for g in geos}) > 1  # really non-uniform
    save_pruned(model, tmp_path / "folder", tokenizer=tok)
    args = ["export", str(tmp_path / "folder"), "--format", "gguf", "--out", str(tmp_path / "p.gguf")]
    assert main([*args, "--tokenizer-pre", "gpt-2"]) == 0
    kv, tensors = fields(tmp_path / "p.gguf")
    assert kv["general.architecture"] == "deci"
    assert kv["deci.attention.head_count"] == [g.num_heads for g in geos]
    assert kv["deci.attention.head_count_kv"] == [g.num_kv_heads for g in geos]
    assert kv["deci.feed_forward_length"] == [g.intermediate for g in geos]
    assert kv["deci.attention.key_length"] == kv["deci.attention.value_length"] == 16
    assert {n: tuple(int(d) for d in t.shape) for n, t in tensors.items()} == hf_tensor_shapes(model)
    assert kv["tokenizer.ggml.pre"] == "gpt-2" and kv["tokenizer.ggml.add_bos_token"] is False
    ids = [1, 2, 3, 280, 7, 7, 7, 99]
    expect = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(gguf_forward(tmp_path / "p.gguf", ids), expect, rtol=1e-4, atol=1e-4)


def test_empty_blocks_use_an_exact_deci_encoding(tmp_path, small_tokenizer):
    """Layer 0 without heads: one head with a zero output (layer 0 sets the head size); layer 1 empty: n_head 0
    and n_ff 0 (the identity); layer 2 without MLP: one zero channel (n_ff 0 would drop its attention)."""
    model = tiny_llama(2, SMALL_VOCAB)
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    adapter.resize_attention(layers[0], 0, 0, False)
    adapter.resize_attention(layers[1], 0, 0, False)
    adapter.resize_mlp(layers[1], 0, False)
    adapter.resize_mlp(layers[2], 0, False)
    adapter.finalize(model, [adapter.geometry(layer) for layer in layers], False)
    export_gguf(model, tmp_path / "e.gguf", tokenizer=small_tokenizer[0], tokenizer_pre="gpt-2")
    kv, tensors = fields(tmp_path / "e.gguf")
    assert kv["general.architecture"] == "deci"
    assert kv["deci.attention.head_count"] == [1, 0, 4] and kv["deci.attention.head_count_kv"] == [1, 0, 2]
    assert kv["deci.feed_forward_length"] == [96, 0, 1]
    assert not any(n.startswith("blk.1.") for n in tensors)  # an absent block has no norm either
    assert not np.array(tensors["blk.0.attn_output.weight"].data).any()
    assert not np.array(tensors["blk.2.ffn_down.weight"].data).any()
    ids = [3, 100, 200, 5, 6]
    expect = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(gguf_forward(tmp_path / "e.gguf", ids), expect, rtol=1e-4, atol=1e-4)


def test_output_biases_are_written(tmp_path, small_tokenizer):
    model = tiny_llama(2, SMALL_VOCAB)
    calib = torch.randint(0, SMALL_VOCAB, (8, 32), generator=torch.Generator().manual_seed(1))
    prune_(model, ratio=0.4, calibration=calib, method="flap", progress=False)
    assert model.model.layers[0].self_attn.o_proj.bias is not None
    export_gguf(model, tmp_path / "b.gguf", tokenizer=small_tokenizer[1], tokenizer_pre="gpt-2")
    kv, tensors = fields(tmp_path / "b.gguf")
    assert kv["general.architecture"] == "deci" and "blk.0.attn_output.bias" in tensors
    ids = [3, 100, 200, 5, 6]
    expect = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(gguf_forward(tmp_path / "b.gguf", ids), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
def test_dtypes(tmp_path, small_tokenizer, dtype):
    model = pruned_llama(2)
    summary = export_gguf(model, tmp_path / "d.gguf", dtype=dtype, tokenizer=small_tokenizer[1], tokenizer_pre="gpt-2")
    kv, tensors = fields(tmp_path / "d.gguf")
    assert kv["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7}[dtype]
    for name, t in tensors.items():
        ne = tuple(int(d) for d in t.shape)
        if len(ne) == 1:
            assert t.tensor_type == Q.F32, name
        elif dtype == "q8_0":  # ne[0] is the row length: Q8_0 needs whole 32-element blocks
            assert t.tensor_type == (Q.Q8_0 if ne[0] % 32 == 0 else Q.F16), name
        else:
            assert t.tensor_type == {"f16": Q.F16, "bf16": Q.BF16}[dtype], name
    assert sum(summary["tensor_types"].values()) == len(tensors)
    if dtype == "q8_0":
        assert {"Q8_0", "F16", "F32"} <= set(summary["tensor_types"])  # pruned widths not multiples of 32


def test_rope_permute_and_tensor_type_oracles():
    w = torch.arange(8.0)[:, None]  # 2 heads of head_dim 4: rows (0 1 2 3) (4 5 6 7)
    assert rope_permute(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert tensor_type((64,), "q8_0") == Q.F32 and tensor_type((8, 64), "q8_0") == Q.Q8_0
    assert tensor_type((8, 33), "q8_0") == Q.F16 and tensor_type((8, 33), "f32") == Q.F32


def test_refusals(tmp_path, small_tokenizer, capsys):
    from numprune.llamagen.config import GPTConfig
    from numprune.llamagen.gpt import build_gpt

    gen = build_gpt(GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=10, block_size=16), seed=0)
    with pytest.raises(NumpruneError, match="LLaMA-layout"):
        export_gguf(gen, tmp_path / "x.gguf", tokenizer=small_tokenizer[1])
    with pytest.raises(NumpruneError, match="dtype"):
        export_gguf(tiny_llama(2, SMALL_VOCAB), tmp_path / "x.gguf", dtype="q4_k", tokenizer=small_tokenizer[1])
    with pytest.raises(NumpruneError, match="--tokenizer-pre"):  # an unknown pre-tokenizer is not guessed
        export_gguf(tiny_llama(2, SMALL_VOCAB), tmp_path / "x.gguf", tokenizer=small_tokenizer[1])
    from transformers import Qwen2Config, Qwen2ForCausalLM

    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=SMALL_VOCAB, hidden_size=64, intermediate_size=96,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    with pytest.raises(NumpruneError, match="'qwen2' has no llama"):
        export_gguf(qwen, tmp_path / "x.gguf", tokenizer=small_tokenizer[1])
    assert not (tmp_path / "x.gguf").exists()
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("numprune: error: model folder")


def test_llamacpp_protocol_scores_the_second_half():
    torch.manual_seed(0)
    model = tiny_llama(2, vocab=128)
    tokens = torch.randint(0, 128, (70,))
    windows = llamacpp_windows(tokens, 16, bos_id=1)
    assert windows.shape == (4, 16) and (windows[:, 0] == 1).all()
    assert torch.equal(windows[1, 1:], tokens[17:32])
    assert llamacpp_windows(tokens, 16, n_chunks=2).shape == (2, 16)
    got = perplexity(model, windows, first=8, progress=False)
    with torch.no_grad():
        logp = model(windows).logits.log_softmax(-1)
    nll = -logp[:, 8:15].gather(-1, windows[:, 9:, None]).mean()
    assert got["tokens"] == 4 * 7
    assert got["ppl"] == pytest.approx(float(nll.exp()), rel=1e-5)
    assert perplexity(model, windows, progress=False)["tokens"] == 4 * 15
    with pytest.raises(NumpruneError, match="at least 32 tokens"):
        llamacpp_windows(tokens[:31], 16)
