"""The Hugging Face decoder layout that every supported family shares; one small subclass per family.

Layout: ``model.model.embed_tokens`` -> ``model.model.layers[i]`` (``input_layernorm``, ``self_attn`` with
``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``, a norm before the MLP, ``mlp`` with ``gate_proj`` / ``up_proj``
/ ``down_proj``) -> ``model.model.norm`` -> ``model.lm_head``. What a family changes (biases, per-head norms,
post-norms, layer types, RoPE variants) is stated in its file (``llama.py``, ``qwen2.py``, ...); the per-layer
classes that make a pruned model reload are in ``numprune/pruned_model.py``.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.errors import StrictDataclassError
from torch import Tensor, nn

from numprune.adapters.base import LayerGeometry
from numprune.pruned_model import PRUNED_CLASSES, resize_attention, resize_mlp
from numprune.sliced_model import SLICED_CLASSES, ResidualRMSNorm, sliced_layer


def base_model_type(model: Any) -> str:
    model_type = getattr(model.config, "model_type", "")
    return model_type.removeprefix("numpruned_")


# config keys that name numprune's per-layer / sliced classes: a rebuilt config sets them afresh
_NUMPRUNE_KEYS = (
    "layer_num_heads",
    "layer_num_kv_heads",
    "layer_intermediate_sizes",
    "output_bias",
    "residual_dims",
    "auto_map",
    "architectures",
    "model_type",
    "transformers_version",
)


def _set_config(model: Any, new: Any) -> None:
    """Point the model, its inner model and its attention modules at ``new``."""
    new._attn_implementation = model.config._attn_implementation
    model.config = new
    model.model.config = new
    for layer in model.model.layers:
        if hasattr(layer.self_attn, "config"):
            layer.self_attn.config = new


class HFDecoderAdapter:
    """The shared adapter; a family sets ``name`` / ``model_type`` and what differs from the LLaMA layout."""

    name = "hf-decoder"
    model_type = ""  # the stock config's model_type
    # SliceGPT rotates the residual stream: only where its norms are RMSNorms before the blocks (no post-norms)
    rotation_invariant = True
    mlp_norm = "post_attention_layernorm"  # the norm whose output the MLP reads
    # llama.cpp's graph that computes this family exactly with LLaMA's tensors (GGUF export), or None where the
    # family adds what that graph lacks (q/k/v biases, per-head norms, post-norms): numprune/export/gguf.py
    gguf_architecture: str | None = None

    def matches(self, model: Any) -> bool:
        """``model`` is of this family (stock, or pruned by numprune) and has the shared layout."""
        if base_model_type(model) != self.model_type:
            return False
        layers = getattr(getattr(model, "model", None), "layers", None)
        return layers is not None and len(layers) > 0 and all(hasattr(layers[0], a) for a in ("self_attn", "mlp"))

    def layers(self, model: Any) -> nn.ModuleList:
        return model.model.layers

    def geometry(self, layer: Any) -> LayerGeometry:
        attn, mlp = layer.self_attn, layer.mlp
        hidden = layer.input_layernorm.weight.numel()
        if hasattr(attn, "q_proj"):
            hd = attn.head_dim
            heads, kv = attn.q_proj.out_features // hd, attn.k_proj.out_features // hd
            bias = attn.q_proj.bias is not None
        else:  # fully pruned block
            hd, heads, kv, bias = 0, 0, 0, False
        inter = mlp.down_proj.in_features if hasattr(mlp, "down_proj") else 0
        return LayerGeometry(
            hidden=hidden, num_heads=heads, num_kv_heads=kv, head_dim=hd, intermediate=inter, qkv_bias=bias
        )

    def out_projections(self, layer: Any) -> tuple[nn.Linear | None, nn.Linear | None]:
        return getattr(layer.self_attn, "o_proj", None), getattr(layer.mlp, "down_proj", None)

    def attn_in(self, layer: Any) -> list[tuple[nn.Linear, str]]:
        attn = layer.self_attn
        return [(attn.q_proj, "q"), (attn.k_proj, "k"), (attn.v_proj, "v")] if hasattr(attn, "q_proj") else []

    def mlp_in(self, layer: Any) -> list[nn.Linear]:
        mlp = layer.mlp
        return [mlp.gate_proj, mlp.up_proj] if hasattr(mlp, "gate_proj") else []

    def output_biases(self, layer: Any) -> tuple[Tensor | None, Tensor | None]:
        """The output biases of the attention and MLP blocks (``o_proj`` / ``down_proj``, or a fully pruned
        block's), None where the model has none (only FLAP-compensated models have them)."""
        attn = getattr(layer.self_attn, "o_proj", layer.self_attn)
        mlp = getattr(layer.mlp, "down_proj", layer.mlp)
        return getattr(attn, "bias", None), getattr(mlp, "bias", None)

    def resize_attention(self, layer: Any, heads: int, kv_heads: int, output_bias: bool) -> nn.Module:
        return resize_attention(layer, heads, kv_heads, output_bias)

    def resize_mlp(self, layer: Any, intermediate: int, output_bias: bool) -> nn.Module:
        return resize_mlp(layer, intermediate, output_bias)

    def run_model(self, model: Any, batch: Tensor) -> Any:
        return model(input_ids=batch, use_cache=False)

    def layer_output(self, output: Any) -> Tensor:
        return output[0] if isinstance(output, tuple) else output

    def finalize(self, model: Any, shapes: list[LayerGeometry], output_bias: bool) -> None:
        """Replace the config by a per-layer one, or a stock one where every layer kept the same counts (and
        the stock class accepts them: it refuses a hidden size that is not a multiple of the head count)."""
        cfg = model.config
        base = base_model_type(model)
        stock_cls = PRUNED_CLASSES[base][0].__mro__[1]
        fields = cfg.to_dict()
        for key in _NUMPRUNE_KEYS:
            fields.pop(key, None)
        heads = [s.num_heads for s in shapes]
        kvs = [s.num_kv_heads for s in shapes]
        inters = [s.intermediate for s in shapes]
        head_dim = next((s.head_dim for s in shapes if s.head_dim), getattr(cfg, "head_dim", None))
        fields["head_dim"] = head_dim
        uniform = len(set(heads)) == len(set(kvs)) == len(set(inters)) == 1 and heads[0] > 0 and inters[0] > 0
        new = None
        if uniform and not output_bias:
            fields_stock = dict(
                fields, num_attention_heads=heads[0], num_key_value_heads=kvs[0], intermediate_size=inters[0]
            )
            try:
                new = stock_cls(**fields_stock)
                new.architectures = [model.__class__.__name__.removeprefix("Numpruned")]
            except (ValueError, StrictDataclassError):
                new = None  # stock configs refuse hidden % heads != 0: fall back to the per-layer config
        if new is None:
            cfg_cls, model_cls = PRUNED_CLASSES[base]
            new = cfg_cls(
                **fields,
                layer_num_heads=heads,
                layer_num_kv_heads=kvs,
                layer_intermediate_sizes=inters,
                output_bias=output_bias,
            )
            new.architectures = [model_cls.__name__]
            new.auto_map = {
                "AutoConfig": f"modeling_numprune.{cfg_cls.__name__}",
                "AutoModelForCausalLM": f"modeling_numprune.{model_cls.__name__}",
            }
        new._attn_implementation = cfg._attn_implementation
        model.config = new
        for layer in self.layers(model):
            if hasattr(layer.self_attn, "config"):
                layer.self_attn.config = new

    # ResidualAdapter: SliceGPT and depth pruning (HF modules are typed Any: their attributes are dynamic)

    def embedding(self, model: Any) -> nn.Embedding:
        return model.model.embed_tokens

    def lm_head(self, model: Any) -> nn.Linear:
        return model.lm_head

    def norm_weights(self, layer: Any) -> tuple[Tensor, Tensor]:
        return layer.input_layernorm.weight, getattr(layer, self.mlp_norm).weight

    def final_norm_weight(self, model: Any) -> Tensor:
        return model.model.norm.weight

    def to_sliced_(self, model: Any) -> None:
        cfg, base = model.config, base_model_type(model)
        if base not in SLICED_CLASSES or any(getattr(cfg, k, None) for k in ("layer_num_heads", "output_bias")):
            raise ValueError(f"slicing needs a dense {', '.join(SLICED_CLASSES)} model, got {cfg.model_type!r}")
        if not self.rotation_invariant:
            raise ValueError(f"the {self.name} layout is not invariant under rotations of its residual stream")
        hidden, eps = cfg.hidden_size, cfg.rms_norm_eps
        layers = model.model.layers
        for i, layer in enumerate(layers):
            layers[i] = sliced_layer(layer, hidden, eps)
        model.model.norm = ResidualRMSNorm(hidden, eps)
        fields = {k: v for k, v in cfg.to_dict().items() if k not in _NUMPRUNE_KEYS}
        cfg_cls, model_cls = SLICED_CLASSES[base]
        new = cfg_cls(**{**fields, "tie_word_embeddings": False}, residual_dims=[hidden] * (2 * len(layers) + 1))
        new.architectures = [model_cls.__name__]
        new.auto_map = {
            "AutoConfig": f"modeling_numprune_sliced.{cfg_cls.__name__}",
            "AutoModelForCausalLM": f"modeling_numprune_sliced.{model_cls.__name__}",
        }
        _set_config(model, new)

    def remove_layers_(self, model: Any, indices: list[int]) -> None:
        drop = set(indices)
        kept = [layer for i, layer in enumerate(model.model.layers) if i not in drop]
        if not kept or len(kept) + len(drop) != len(model.model.layers):
            raise ValueError(f"cannot remove layers {sorted(drop)} of {len(model.model.layers)}")
        model.model.layers = nn.ModuleList(kept)
        for i, layer in enumerate(kept):
            if hasattr(layer.self_attn, "layer_idx"):
                layer.self_attn.layer_idx = i  # the KV-cache slot
        cfg = model.config
        fields = cfg.to_dict()
        fields["num_hidden_layers"] = len(kept)
        for key in ("layer_types", "layer_num_heads", "layer_num_kv_heads", "layer_intermediate_sizes"):
            if isinstance(fields.get(key), list):
                fields[key] = [v for i, v in enumerate(fields[key]) if i not in drop]
        for key in ("model_type", "transformers_version"):
            fields.pop(key, None)
        new = type(cfg)(**fields)
        _set_config(model, new)
