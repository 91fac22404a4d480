"""LlamaGen: model, 2D RoPE, checkpoints, sampling, images, pruning through the shared ``prune_`` pipeline."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from numprune import NumpruneError, prune_
from numprune.adapters import get_adapter
from numprune.llamagen.checkpoint import load_llamagen, load_official_gpt, official_state_dict, save_llamagen
from numprune.llamagen.config import GPTConfig, gpt_config
from numprune.llamagen.gpt import LlamaGen, build_gpt
from numprune.llamagen.rope import apply_rope_2d, rope_2d_table
from numprune.llamagen.sampling import calibration_tokens, filter_logits, generate_images, generate_tokens
from numprune.llamagen.vq import VQConfig, VQModel, load_official_vq
from numprune.methods import METHODS, Method, get_method

torch.set_num_threads(1)

TINY = dict(dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=10, block_size=16, multiple_of=16)


def tiny(dtype: torch.dtype = torch.float64, **kw) -> LlamaGen:
    return build_gpt(GPTConfig(**{**TINY, **kw}), dtype=dtype, seed=0).eval()


def tiny_vq() -> VQModel:
    torch.manual_seed(0)
    cfg = VQConfig(codebook_size=64, codebook_embed_dim=4, z_channels=32, ch=32, ch_mult=[1, 1], usage_buffer=16)
    return VQModel(cfg).eval()


def rows(model: LlamaGen, n: int = 3, seed: int = 0) -> torch.Tensor:
    """Teacher-forced rows [class, tok_0 .. tok_{T-2}]."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, model.config.num_classes, (n, 1), generator=g)
    toks = torch.randint(0, model.config.vocab_size, (n, model.config.block_size - 1), generator=g)
    return torch.cat([cls, toks], dim=1)


# --- architecture -------------------------------------------------------------------------------------------


def test_official_configs_have_the_published_sizes():
    expected = {
        "GPT-B": 110_888_448,
        "GPT-L": 342_910_976,
        "GPT-XL": 774_699_520,
        "GPT-XXL": 1_410_972_672,
        "GPT-3B": 3_096_659_200,
    }
    for name, count in expected.items():
        with torch.device("meta"):
            model = LlamaGen(gpt_config(name))
        assert sum(p.numel() for p in model.parameters()) == count, name
    assert gpt_config("GPT-3B").head_dim == 100 and gpt_config("GPT-3B").ffn_dim == 8704
    assert gpt_config("GPT-XXL").block_size == 576


def test_rope_2d_rows_then_columns_and_zero_class_position():
    hd, grid = 8, 3
    table = rope_2d_table(grid, hd, base=10000.0)  # [1 + 9, 4, 2]
    assert table.shape == (1 + grid * grid, hd // 2, 2)
    assert torch.all(table[0] == 0)  # class position: cos = sin = 0
    freqs = 1.0 / 10000 ** (torch.tensor([0.0, 2.0]) / (hd // 2))  # hd/4 frequencies
    r, c = 1, 2  # image token k = r * grid + c sits at position 1 + k
    ang = torch.cat([r * freqs, c * freqs])
    assert torch.allclose(table[1 + r * grid + c, :, 0], ang.cos())
    assert torch.allclose(table[1 + r * grid + c, :, 1], ang.sin())
    # interleaved pairs: (1, 0) rotated by theta is (cos, sin); the class position zeroes q/k
    x = torch.zeros(1, 2, 1, hd)
    x[..., 0::2] = 1.0
    out = apply_rope_2d(x, table[[0, 1 + r * grid + c]])
    assert torch.all(out[0, 0] == 0)
    assert torch.allclose(out[0, 1, 0, 0::2], ang.cos()) and torch.allclose(out[0, 1, 0, 1::2], ang.sin())


def test_adapter_is_carried_by_the_model():
    model = tiny()
    adapter = get_adapter(model)
    geo = adapter.geometry(model.layers[0])
    assert adapter.name == "llamagen" and (geo.num_heads, geo.head_dim, geo.intermediate) == (4, 16, 176)
    assert adapter.attn_in(model.layers[0]) == [(model.layers[0].attention.wqkv, "qkv")]


def test_kv_cache_logits_equal_full_recomputation():
    model = tiny()
    x = rows(model, 2)
    full = model(x)  # [2, 16, V]
    model.setup_caches(2, model.seq_len)
    steps = [model(x[:, t : t + 1], torch.tensor([t])) for t in range(x.shape[1])]
    model.clear_caches()
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-10)
    assert not torch.allclose(full[:, 1], full[:, 2])  # positions differ (causal, RoPE)


# --- sampling ---------------------------------------------------------------------------------------------


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.6)).tolist() == [[False, False, True]]  # keeps the crosser
    assert torch.isinf(filter_logits(logits, top_p=0.4)).tolist() == [[False, True, True]]
    assert not torch.isinf(filter_logits(logits)).any()


def test_generation_shapes_seed_and_cache():
    model = tiny()
    cls = torch.tensor([1, 2, 3])
    a = generate_tokens(model, cls, cfg_scale=2.0, top_k=20, seed=3)
    assert a.shape == (3, 16) and a.dtype == torch.long and 0 <= a.min() and a.max() < 64
    assert torch.equal(a, generate_tokens(model, cls, cfg_scale=2.0, top_k=20, seed=3))
    assert not torch.equal(a, generate_tokens(model, cls, cfg_scale=2.0, top_k=20, seed=4))
    assert torch.equal(a, generate_tokens(model, cls, cfg_scale=2.0, top_k=20, seed=3, use_cache=False))
    assert model.max_seq == 0 and model.layers[0].attention.kv_cache is None  # caches released


def test_cfg_combines_raw_logits():
    model = tiny()
    cls = torch.tensor([1, 5])
    scale = 3.0
    first = generate_tokens(model, cls, cfg_scale=scale, top_k=1, num_tokens=1)[:, 0]  # greedy first token
    logits = model(torch.tensor([[1], [5], [10], [10]]))[:, -1]  # cond rows, then null class 10
    expect = (logits[2:] + (logits[:2] - logits[2:]) * scale).argmax(-1)
    assert torch.equal(first, expect)
    assert not torch.equal(expect, logits[:2].argmax(-1)) or not torch.equal(expect, logits[2:].argmax(-1))


def test_cfg_interval_switches_to_conditional_logits_after_that_decode_step():
    model = tiny()
    cls = torch.tensor([2])
    guided = generate_tokens(model, cls, cfg_scale=4.0, top_k=1)
    mixed = generate_tokens(model, cls, cfg_scale=4.0, top_k=1, cfg_interval=0)
    assert torch.equal(mixed[:, :2], guided[:, :2])  # prefill token and decode step 0 are guided
    for t in range(2, mixed.shape[1]):  # afterwards: greedy on the conditional logits alone
        logits = model(torch.cat([cls[:, None], mixed[:, :t]], dim=1))[:, -1]
        assert torch.equal(mixed[:, t], logits.argmax(-1))
    assert not torch.equal(mixed, guided)


def test_calibration_rows_put_the_class_first():
    model = tiny()
    calib = calibration_tokens(model, [4, 7], per_class=2, batch_size=4, cfg_scale=1.5, seed=1)
    assert calib.shape == (4, 16) and calib[:, 0].tolist() == [4, 4, 7, 7]
    toks = generate_tokens(model, torch.tensor([4, 4, 7, 7]), cfg_scale=1.5, seed=1)
    assert torch.equal(calib[:, 1:], toks[:, :-1])


def test_generate_images_writes_pngs_and_adm_npz(tmp_path):
    model, vq = tiny(torch.float32), tiny_vq()
    arr = generate_images(
        model,
        vq,
        [0, 1, 2],
        batch_size=2,
        cfg_scale=1.5,
        eval_size=12,
        seed=0,
        out_dir=tmp_path / "png",
        npz_path=tmp_path / "samples.npz",
    )
    assert arr.shape == (3, 12, 12, 3) and arr.dtype == np.uint8
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    with np.load(tmp_path / "samples.npz") as data:
        assert np.array_equal(data["arr_0"], arr)
    again = generate_images(model, vq, [0, 1, 2], batch_size=2, cfg_scale=1.5, eval_size=None, seed=0)
    assert again.shape == (3, 8, 8, 3)  # 4x4 grid, x2 tokenizer, no resize


# --- checkpoints --------------------------------------------------------------------------------------------


def test_official_checkpoint_round_trip_and_key_errors(tmp_path):
    model = tiny(torch.float32)
    x = rows(model)
    sd = official_state_dict(model)
    extras = {"freqs_cis": torch.zeros(17, 8, 2), "layers.0.attention.kv_cache.k_cache": torch.zeros(1)}
    torch.save({"model": {**sd, **extras}}, tmp_path / "ddp.pt")  # DDP layout: weights under "model"
    torch.save(sd, tmp_path / "fsdp.pt")  # FSDP layout: bare state dict
    for f in ("ddp.pt", "fsdp.pt"):
        loaded = load_official_gpt(tmp_path / f, "GPT-B", **TINY)
        assert torch.equal(loaded(x), model(x))
    missing = {k: v for k, v in sd.items() if k != "layers.1.feed_forward.w3.weight"}
    with pytest.raises(NumpruneError, match=r"missing keys \(1\): layers\.1\.feed_forward\.w3\.weight"):
        load_official_gpt(missing, **TINY)
    with pytest.raises(NumpruneError, match=r"unexpected keys \(1\): layers\.0\.attention\.wqkv\.bias"):
        load_official_gpt({**sd, "layers.0.attention.wqkv.bias": torch.zeros(192)}, **TINY)
    with pytest.raises(NumpruneError, match="shape mismatches"):
        load_official_gpt(sd, **{**TINY, "dim": 128})


def test_vq_checkpoint_round_trip_and_codebook_lookup(tmp_path):
    vq = tiny_vq()
    torch.save({"model": vq.state_dict()}, tmp_path / "vq.pt")
    loaded = load_official_vq(tmp_path / "vq.pt", vq.config)
    codes = torch.randint(0, 64, (2, 16))
    assert torch.equal(loaded.decode_code(codes), vq.decode_code(codes))
    assert vq.decode_code(codes).shape == (2, 3, 8, 8)
    # the quantizer maps each (normalised) codebook vector back to its own code
    z = vq.quantize.lookup(codes, (4, 4))
    assert torch.equal(vq.quantize.indices(z), codes)
    assert vq.encode_to_codes(torch.rand(1, 3, 8, 8) * 2 - 1).shape == (1, 16)
    with pytest.raises(NumpruneError, match="missing keys"):
        load_official_vq({k: v for k, v in vq.state_dict().items() if "decoder.conv_out" not in k}, vq.config)


# --- pruning ----------------------------------------------------------------------------------------------


def _prune_pair(ratio: float = 0.3, method: str = "numerical", **opts):
    model = tiny()
    calib = rows(model, 6, seed=1)
    masked, physical = copy.deepcopy(model), copy.deepcopy(model)
    prune_(masked, ratio=ratio, calibration=calib, method=method, mask_only=True, progress=False, **opts)
    plan = prune_(physical, ratio=ratio, calibration=calib, method=method, progress=False, **opts)
    return model, masked, physical, plan


def test_masked_equals_physically_pruned_logits():
    dense, masked, physical, plan = _prune_pair(head_scaling="none")
    assert plan.achieved["heads_pruned"] > 0 and plan.achieved["channels_pruned"] > 0
    x = rows(dense, 3, seed=2)
    assert torch.allclose(masked(x), physical(x), atol=1e-10)
    assert not torch.allclose(dense(x), physical(x), atol=1e-4)
    heads = [len(p.heads) for p in plan.layers]
    assert physical.config.layer_n_heads == heads
    assert physical.config.layer_ffn_dims == [len(p.channels) for p in plan.layers]
    assert [layer.attention.wqkv.out_features for layer in physical.layers] == [3 * 16 * h for h in heads]
    physical.setup_caches(2, physical.seq_len)  # the KV cache follows each layer's own head count
    assert [layer.attention.kv_cache.k_cache.shape[1] for layer in physical.layers] == heads
    physical.clear_caches()
    cls = torch.tensor([1, 2])
    assert torch.equal(
        generate_tokens(physical, cls, cfg_scale=2.0, seed=0),
        generate_tokens(physical, cls, cfg_scale=2.0, seed=0, use_cache=False),
    )


def test_pruned_model_saves_and_reloads_identically(tmp_path):
    _, _, physical, plan = _prune_pair(head_scaling="none")
    save_llamagen(physical, tmp_path / "pruned", plan=plan)
    cfg = json.loads((tmp_path / "pruned" / "llamagen_config.json").read_text())
    assert cfg["layer_n_heads"] == physical.config.layer_n_heads
    reloaded = load_llamagen(tmp_path / "pruned", dtype=torch.float64)
    x = rows(physical, 2, seed=3)
    assert torch.equal(reloaded(x), physical(x))
    with pytest.raises(NumpruneError, match="exists"):
        save_llamagen(physical, tmp_path / "pruned")


class _BiasMethod(Method):
    """A stand-in for bias-compensating methods (FLAP): magnitude scores, mean-shift bias on the outputs."""

    name = "test-bias"
    default_allocation = "uniform"
    default_compensation = "dense"  # as FLAP: the bias from the dense pass
    repair_kind = "bias"

    def score(self, stats, o_weight, down_weight, geo, cfg):
        from numprune.methods import LayerScores

        ch = stats["o_proj"].variance * o_weight.double().pow(2).sum(0)
        return LayerScores(
            heads=ch.reshape(geo.num_heads, geo.head_dim).mean(1),
            channels=stats["down_proj"].variance * down_weight.double().pow(2).sum(0),
        )

    def repair(self, stats, weight, keep, cfg):
        mask = torch.ones(weight.shape[1], dtype=torch.bool)
        mask[keep] = False
        return weight[:, keep], (weight.double()[:, mask] @ stats.mean[mask]).to(weight.dtype)


def test_bias_adding_methods_work_and_reload(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "test-bias", _BiasMethod)
    _, masked, physical, _ = _prune_pair(0.25, method="test-bias")
    assert physical.config.output_bias and physical.layers[0].attention.wo.bias is not None
    x = rows(physical, 2, seed=4)
    assert torch.allclose(masked(x), physical(x), atol=1e-10)
    reloaded = load_llamagen(save_llamagen(physical, tmp_path / "b"), dtype=torch.float64)
    assert torch.equal(reloaded(x), physical(x))


def test_whole_layers_can_be_removed():
    model = tiny()
    model.layers[1].resize_attention(0, output_bias=False)
    model.layers[1].resize_mlp(0, output_bias=False)
    geo = get_adapter(model).geometry(model.layers[1])
    assert (geo.num_heads, geo.intermediate) == (0, 0)
    cls = torch.tensor([3])
    assert torch.equal(generate_tokens(model, cls, seed=0), generate_tokens(model, cls, seed=0, use_cache=False))


def test_bench_script_runs_tiny_on_cpu(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / "bench_llamagen_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_llamagen_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.csv"
    written = bench.main(["--tiny", "--out", str(out), "--ratios", "0.2"])
    from numprune.results import read_rows

    got = read_rows(out)
    assert len(got) == len(written) > 0
    metrics = {r["metric"] for r in got}
    assert {"images_per_s", "peak_memory_gib"} <= metrics
    assert {r["method"] for r in got} == {"dense", "numerical"}


# the head/channel methods: slicegpt and depth need a ResidualAdapter, which LlamaGen's adapter is not
@pytest.mark.parametrize("method", sorted(m for m in METHODS if get_method(m).scoring != "transform"))
def test_every_method_prunes_llamagen(method):
    """Every baseline (FLAP: the paper's LlamaGen baseline) runs through the adapter; masked == physical."""
    dense, masked, physical, plan = _prune_pair(ratio=0.3, method=method)
    assert plan.achieved["params_ratio"] == pytest.approx(0.3, abs=0.06)
    x = rows(dense, 3, seed=2)
    assert torch.allclose(masked(x), physical(x), atol=1e-6)


def test_streaming_calibration_on_llamagen():
    """LlamaGen's paper-scale calibration (128 images x 1000 classes) only fits streamed: same plan as layerwise."""
    _, _, layerwise, plan = _prune_pair(head_scaling="none", compensation="dense")
    _, _, streamed, plan_s = _prune_pair(
        head_scaling="none", compensation="dense", calibration_mode="streaming", calibration_batch=4
    )
    assert plan.layers == plan_s.layers
    x = rows(layerwise, 2, seed=2)
    assert torch.allclose(layerwise(x), streamed(x), atol=1e-4)
