"""Tiny random LLaMA-family models (MHA and GQA) for fast offline tests."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

VOCAB = 128
SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM),
}


def tiny_config(kind: str = "llama", kv_heads: int = 4, layers: int = 3, **kw):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        **kw,
    )
    return FAMILIES[kind][0](**common)


def tiny_model(kind: str = "llama", kv_heads: int = 4, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = FAMILIES[kind][1](tiny_config(kind, kv_heads, **kw)).eval()
    # Random init gives near-identical channels; spread the scales so that scores are well separated.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(torch.rand(p.shape[0], 1) * 2 + 0.2)
    return model


@pytest.fixture(params=[("llama", 4), ("llama", 2)], ids=["mha", "gqa"])
def model(request):
    kind, kv = request.param
    return tiny_model(kind, kv)


@pytest.fixture
def calib():
    return torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def inputs():
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data``: tests that read it skip on a machine without it, and fail under CI (``CI`` set)."""
    path = os.path.abspath(os.environ.get("NUMPRUNE_DATA_DIR") or SHARED_DATA)
    if not os.path.isdir(path):
        if os.environ.get("CI"):
            pytest.fail(f"CI: the shared data directory {path} is missing")
        pytest.skip("../shared/data not present")
    return path
