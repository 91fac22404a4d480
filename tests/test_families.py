"""Every supported family on tiny random models built from the real transformers config classes (MHA and GQA):
masked == physical logits, save -> reload with and without remote code, stock config when uniform, and what
each family's adapter must get right (Llama-3.x RoPE scaling, Mistral's window, Qwen2's biases, Qwen3's and
Gemma 3's per-head norms, Gemma 3's post-norms, layer types, attention scale and single KV head)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import numprune
from numprune import NumpruneError, prune_
from numprune.adapters import get_adapter
from tests.conftest import tiny_model

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
GEMMA3 = {
    "head_dim": 32,  # != hidden / heads, as in Gemma 3 270M (640 / 4 vs 256)
    "query_pre_attn_scalar": 24,  # the attention scale is 24 ** -0.5, not head_dim ** -0.5
    "sliding_window": 8,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
}
# (family, KV heads, extra config) -> the cases every test runs
CASES = {
    "llama3-mha": ("llama", 4, {"rope_scaling": LLAMA3_ROPE}),
    "llama3-gqa": ("llama", 2, {"rope_scaling": LLAMA3_ROPE}),
    "mistral-gqa": ("mistral", 2, {"sliding_window": 8}),
    "qwen2-mha": ("qwen2", 4, {}),
    "qwen2-gqa": ("qwen2", 2, {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
    "qwen3-mha": ("qwen3", 4, {"head_dim": 16}),
    "qwen3-gqa": ("qwen3", 2, {"head_dim": 16}),
    "gemma3-gqa": ("gemma3", 2, GEMMA3),
    "gemma3-1kv": ("gemma3", 1, GEMMA3),
}
GEN = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)


def family_model(case: str):
    """A tiny model of the case whose biases and norm weights are random too (zero biases and unit norms would
    hide a wrong slice of a bias or a norm that should not be sliced)."""
    kind, kv, kw = CASES[case]
    model = tiny_model(kind, kv, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (0 if name.endswith("bias") or kind == "gemma3" else 1))
    return model


def pruned(case: str, calib, masked: bool = True, **opts):
    """The physically pruned model, the masked one (``masked``: else None) and the plan."""
    opts = {"ratio": 0.4, "head_scaling": "none", "compensation": "dense", "progress": False, **opts}
    model = family_model(case)
    mask = copy.deepcopy(model) if masked else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the single-KV-head note (tested below)
        plan = prune_(model, calibration=calib, **opts)
        if mask is not None:
            prune_(mask, calibration=calib, mask_only=True, **opts)
    return model, mask, plan


@pytest.mark.parametrize("case", list(CASES))
def test_masked_equals_physical_and_reloads(case, calib, inputs, tmp_path):
    phys, masked, plan = pruned(case, calib)
    assert get_adapter(phys).model_type == CASES[case][0].replace("gemma3", "gemma3_text")
    assert plan.achieved["heads_pruned"] > 0 and plan.achieved["channels_pruned"] > 0
    expect = phys(inputs).logits
    torch.testing.assert_close(expect, masked(inputs).logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(phys.generate(inputs, **GEN), masked.generate(inputs, **GEN))

    out = numprune.save_pruned(phys, tmp_path / "m", plan)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == f"numpruned_{phys.config.model_type.removeprefix('numpruned_')}"
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    local = numprune.load_pruned(out).eval()  # no remote code
    for loaded in (remote, local):
        torch.testing.assert_close(loaded(inputs).logits, expect, atol=0, rtol=0)
    assert torch.equal(local.generate(inputs, **GEN), phys.generate(inputs, **GEN))


@pytest.mark.parametrize("case", ["llama3-gqa", "mistral-gqa", "qwen2-gqa", "qwen3-mha", "gemma3-gqa"])
def test_uniform_result_saves_the_stock_config(case, calib, inputs, tmp_path):
    model, _, plan = pruned(case, calib, False, ratio=0.5, allocation="uniform", gqa="groups")
    assert len({len(lp.heads) for lp in plan.layers}) == 1 and len({len(lp.channels) for lp in plan.layers}) == 1
    out = numprune.save_pruned(model, tmp_path / "m", plan)
    cfg = json.loads((out / "config.json").read_text())
    dense = family_model(case).config
    assert "auto_map" not in cfg and cfg["model_type"] == dense.model_type
    assert not (out / "modeling_numprune.py").exists()
    for key in ("rope_parameters", "sliding_window", "layer_types", "query_pre_attn_scalar", "head_dim"):
        if hasattr(dense, key):  # the family's own fields survive the rebuilt config
            assert cfg[key] == json.loads(json.dumps(getattr(dense, key))), key
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(stock).__name__ == type(family_model(case)).__name__
    torch.testing.assert_close(stock(inputs).logits, model(inputs).logits, atol=0, rtol=0)


def test_llama3_rope_scaling_is_kept_and_used(calib, inputs, tmp_path):
    model, _, plan = pruned("llama3-gqa", calib, False)
    out = numprune.save_pruned(model, tmp_path / "m", plan)
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
    plain = copy.deepcopy(model)  # the same weights with default RoPE compute other logits: the scaling is live
    plain.config.rope_parameters = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
    reloaded = numprune.load_pruned(out).eval()
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(3))  # past the original 16
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    cls = type(reloaded)
    cfg_plain = type(reloaded.config)(**{**reloaded.config.to_dict(), "rope_parameters": plain.config.rope_parameters})
    other = cls(cfg_plain).eval()
    other.load_state_dict(reloaded.state_dict())
    assert not torch.allclose(other(ids).logits, reloaded(ids).logits)


def test_qwen2_kept_bias_rows_follow_the_kept_heads(calib):
    dense = family_model("qwen2-gqa")
    model, _, plan = pruned("qwen2-gqa", calib, False)
    hd = dense.config.hidden_size // dense.config.num_attention_heads
    for lp, d, p in zip(plan.layers, dense.model.layers, model.model.layers):
        for name, heads in (("q_proj", lp.heads), ("k_proj", lp.kv_heads), ("v_proj", lp.kv_heads)):
            rows = (torch.tensor(heads)[:, None] * hd + torch.arange(hd)).reshape(-1)
            assert torch.equal(getattr(p.self_attn, name).bias, getattr(d.self_attn, name).bias[rows])
            assert torch.equal(getattr(p.self_attn, name).weight, getattr(d.self_attn, name).weight[rows])


@pytest.mark.parametrize("case", ["qwen3-gqa", "gemma3-gqa"])
def test_per_head_norms_are_unchanged(case, calib):
    dense = family_model(case)
    model, _, plan = pruned(case, calib, False)
    assert any(len(lp.heads) < dense.config.num_attention_heads for lp in plan.layers)
    for d, p in zip(dense.model.layers, model.model.layers):
        for norm in ("q_norm", "k_norm"):
            assert torch.equal(getattr(p.self_attn, norm).weight, getattr(d.self_attn, norm).weight)
            assert getattr(p.self_attn, norm).weight.numel() == dense.config.head_dim


def test_gemma3_compensation_targets_the_raw_projection_output(calib):
    """With every head and channel kept, dense compensation reproduces the o_proj / down_proj weights (the
    refit target is the projection's own output, before the post-norm), so the model is unchanged."""
    model = family_model("gemma3-gqa")
    ref = copy.deepcopy(model)
    prune_(model, calibration=calib, ratio=0.0, compensation="dense", damp=0.0, progress=False)
    for a, b in zip(model.model.layers, ref.model.layers):
        torch.testing.assert_close(a.self_attn.o_proj.weight, b.self_attn.o_proj.weight, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(a.mlp.down_proj.weight, b.mlp.down_proj.weight, atol=1e-4, rtol=1e-3)
        assert torch.equal(a.post_attention_layernorm.weight, b.post_attention_layernorm.weight)
        assert torch.equal(a.post_feedforward_layernorm.weight, b.post_feedforward_layernorm.weight)


def test_one_kv_head_groups_prunes_query_heads_and_says_so(calib):
    model = family_model("gemma3-1kv")
    with pytest.warns(UserWarning, match="one KV head"):
        plan = prune_(model, calibration=calib, ratio=0.4, gqa="groups", head_scaling="none", progress=False)
    assert plan.achieved["gqa_effective"] == "query" and plan.achieved["heads_pruned"] > 0
    assert all(lp.kv_heads == [0] for lp in plan.layers) and "acted as query" in plan.summary()
    assert "embeddings" in plan.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the asked mode is the one used: no note
        plan = prune_(family_model("gemma3-1kv"), calibration=calib, ratio=0.4, gqa="query", progress=False)
    assert plan.achieved["gqa_effective"] == "query"


def test_gemma3_depth_keeps_layer_types_and_slicegpt_is_refused(calib, inputs, tmp_path):
    model = family_model("gemma3-gqa")
    plan = prune_(model, calibration=calib, ratio=0.3, method="depth", progress=False)
    removed = plan.transform["removed_layers"]
    assert model.config.layer_types == [t for i, t in enumerate(GEMMA3["layer_types"]) if i not in removed]
    out = numprune.save_pruned(model, tmp_path / "m", plan)
    torch.testing.assert_close(numprune.load_pruned(out).eval()(inputs).logits, model(inputs).logits, atol=0, rtol=0)
    with pytest.raises(NumpruneError, match=r"slicegpt rotates the residual stream.*gemma3.*llama, mistral"):
        prune_(family_model("gemma3-gqa"), calibration=calib, ratio=0.3, method="slicegpt", progress=False)


def test_unsupported_families_name_the_supported_ones(calib):
    from transformers import Gemma3Config, GPT2Config, GPT2LMHeadModel, PhiConfig, PhiForCausalLM

    models = {
        "gpt2": GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=128)),
        "phi": PhiForCausalLM(
            PhiConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=128)
        ),
    }
    for kind, model in models.items():
        with pytest.raises(NumpruneError, match=f"unsupported architecture '{kind}'.*llama, mistral, qwen2, qwen3"):
            prune_(model, calibration=calib, ratio=0.2, progress=False)

    class VisionLanguage(torch.nn.Module):  # the config is what the adapter looks at; no weights needed
        config = Gemma3Config()

    with pytest.raises(NumpruneError, match=r"'gemma3' \(a vision-language.*Gemma3ForCausalLM.*gemma3 \(gemma3_text\)"):
        get_adapter(VisionLanguage())


@pytest.mark.parametrize("case", ["gemma3-gqa", "qwen2-gqa", "mistral-gqa", "llama3-mha"])
def test_layerwise_runner_gives_each_layer_its_own_inputs(case, calib):
    """The layer-by-layer calibration walk computes the model's own hidden states: every layer gets the RoPE
    tables and mask of its type (Gemma 3's global layers rotate with another theta than its sliding layers;
    windows of 8 < the 32-token samples make the masks differ)."""
    from numprune.calibrate import LayerwiseRunner

    model = family_model(case)
    runner = LayerwiseRunner(model, get_adapter(model), calib, torch.device("cpu"), progress=False)
    expect = model(calib, output_hidden_states=True).hidden_states
    layers = model.model.layers
    for i, layer in enumerate(layers[:-1]):
        runner.position = i
        runner.hidden = runner.forward(layer)
        torch.testing.assert_close(torch.cat(runner.hidden), expect[i + 1], atol=1e-5, rtol=1e-5)
