"""Depth pruning (ShortGPT's Block Influence): the score, the block count, and the pruned model is exactly the
stock model without those blocks (logits, generation with a KV cache, save/reload with a stock config)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import numprune
from numprune import prune_
from numprune.adapters import get_adapter
from numprune.methods.depth import block_influence, blocks_to_remove, influence_scores
from tests.conftest import tiny_config, tiny_model

GEN = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)


def test_block_influence_values():
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    assert block_influence([x], [x]) == pytest.approx(0.0, abs=1e-12)
    assert block_influence([x], [3 * x]) == pytest.approx(0.0, abs=1e-12)  # scale does not count
    assert block_influence([x], [-x]) == pytest.approx(2.0)
    e = torch.eye(2)[None]  # two tokens, each output orthogonal to its input
    assert block_influence([e], [e.flip(-1)]) == pytest.approx(1.0)


def test_blocks_to_remove_picks_the_lowest_scores_closest_to_the_ratio():
    scores, costs = [0.5, 0.1, 0.3, 0.2, 0.9], [10, 10, 10, 10, 10]
    assert blocks_to_remove(scores, costs, 0.2) == [1]
    assert blocks_to_remove(scores, costs, 0.4) == [1, 3]
    assert blocks_to_remove(scores, costs, 0.55) == [1, 2, 3]  # 0.6 is closer than 0.4
    assert blocks_to_remove(scores, costs, 0.05) == []  # 0 blocks is closer than 1
    assert blocks_to_remove(scores, costs, 0.99) == [0, 1, 2, 3]  # one block always stays
    assert blocks_to_remove([0.1, 0.2, 0.3], [10, 30, 10], 0.4) == [0]  # unequal blocks: by parameters (0.2 < 0.8)
    assert blocks_to_remove([0.1, 0.2, 0.3], [10, 30, 10], 0.7) == [0, 1]


def _identity_layer_(model, i):
    """Layer ``i`` adds nothing to the residual: its output equals its input."""
    with torch.no_grad():
        model.model.layers[i].self_attn.o_proj.weight.zero_()
        model.model.layers[i].mlp.down_proj.weight.zero_()


def test_an_identity_block_scores_zero_and_goes_first(model, calib):
    _identity_layer_(model, 1)
    scores = influence_scores(model, get_adapter(model), calib, torch.device("cpu"))
    assert scores[1] == pytest.approx(0.0, abs=1e-9) and min(scores[0], scores[2]) > 1e-3
    plan = prune_(model, calibration=calib, ratio=0.3, method="depth", progress=False)
    assert plan.transform["removed_layers"] == [1] and plan.transform["block_influence"] == pytest.approx(scores)


def _stock_without(kind: str, kv: int, dense, removed: list[int], **kw):
    """The stock HF model with ``len(dense layers) - len(removed)`` layers and the remaining weights."""
    keep = [i for i in range(len(dense.model.layers)) if i not in removed]
    cls = type(dense)
    stock = cls(tiny_config(kind, kv, layers=len(keep), **kw)).eval()
    state = {}
    for name, value in dense.state_dict().items():
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            if int(i) not in keep:
                continue
            name = f"model.layers.{keep.index(int(i))}.{rest}"
        state[name] = value
    stock.load_state_dict(state)
    return stock


@pytest.mark.parametrize("kind,kv", [("llama", 4), ("llama", 2), ("qwen2", 2)])
def test_removing_blocks_is_the_stock_model_without_them(kind, kv, calib, inputs):
    kw = {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1} if kind == "qwen2" else {}
    dense = tiny_model(kind, kv, layers=4, **kw)
    _identity_layer_(dense, 2)
    model = tiny_model(kind, kv, layers=4, **kw)
    _identity_layer_(model, 2)
    plan = prune_(model, calibration=calib, ratio=0.5, method="depth", progress=False)
    removed = plan.transform["removed_layers"]
    assert len(removed) == 2 and 2 in removed
    if kind == "qwen2":  # the stock reference has the kept layers' attention types
        kw["layer_types"] = [t for i, t in enumerate(dense.config.layer_types) if i not in removed]
    stock = _stock_without(kind, kv, dense, removed, **kw)
    assert torch.equal(model(inputs).logits, stock(inputs).logits)
    assert torch.equal(model.generate(inputs, **GEN), stock.generate(inputs, **GEN))  # KV-cache slots renumbered
    if kind == "qwen2":
        assert dense.config.layer_types == ["full_attention"] + ["sliding_attention"] * 3
        assert model.config.layer_types == kw["layer_types"]


@pytest.mark.parametrize("ratio,blocks", [(0.1, 0), (0.2, 1), (0.4, 2), (0.5, 2)])
def test_achieved_ratio_is_the_removed_blocks_share(calib, ratio, blocks):
    model = tiny_model("llama", 2, layers=5)
    dense = sum(p.numel() for n, p in model.model.layers.named_parameters() if "proj" in n)
    plan = prune_(model, calibration=calib, ratio=ratio, method="depth", progress=False)
    after = sum(p.numel() for n, p in model.model.layers.named_parameters() if "proj" in n)
    a = plan.achieved
    assert len(plan.transform["removed_layers"]) == blocks == 5 - len(model.model.layers)
    assert a["attn_mlp_params_total"] == dense and a["attn_mlp_params_removed"] == dense - after
    assert a["params_ratio"] == pytest.approx(blocks / 5)
    assert a["heads_pruned"] == 4 * blocks and a["channels_pruned"] == 96 * blocks
    assert sum(not lp.heads for lp in plan.layers) == blocks and len(plan.layers) == 5
    assert f"removed {blocks}/5 decoder blocks" in plan.summary()


def test_save_reload_writes_a_stock_config(calib, inputs, tmp_path):
    model = tiny_model("llama", 2, layers=4, tie_word_embeddings=True)
    plan = prune_(model, calibration=calib, ratio=0.25, method="depth", progress=False)
    out = numprune.save_pruned(model, tmp_path / "m", plan)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 3 and "auto_map" not in cfg
    assert not list(out.glob("modeling_*.py"))
    expect = model(inputs).logits
    for loaded in (numprune.load_pruned(out), AutoModelForCausalLM.from_pretrained(out)):
        assert type(loaded).__name__ == "LlamaForCausalLM"
        torch.testing.assert_close(loaded.eval()(inputs).logits, expect, atol=0, rtol=0)
    assert numprune.PruningPlan.load(out / "pruning_plan.json").transform == plan.transform


def test_depth_after_head_pruning_shortens_the_per_layer_config(calib, inputs, tmp_path):
    model = tiny_model("llama", 2, layers=4)
    prune_(model, calibration=calib, ratio=0.3, progress=False)
    heads = list(model.config.layer_num_heads)
    plan = prune_(model, calibration=calib, ratio=0.25, method="depth", progress=False)
    removed = plan.transform["removed_layers"]
    assert model.config.layer_num_heads == [h for i, h in enumerate(heads) if i not in removed]
    out = numprune.save_pruned(model, tmp_path / "m", plan)
    for loaded in (numprune.load_pruned(out), AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)):
        torch.testing.assert_close(loaded.eval()(inputs).logits, model(inputs).logits, atol=0, rtol=0)
