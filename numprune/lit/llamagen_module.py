"""``LlamaGenModule``: a LlamaGen GPT + VQ decoder under Lightning. Validation generates images and scores them.

The same pattern as ``CausalLMModule``: the models are loaded in ``configure_model``; the scoring and compensation
callbacks (``numprune.lit.callbacks``) take their calibration rows from ``calibration()`` (here: the model's own
samples, ``numprune.llamagen.calibration_tokens``) and store the plan on the module before validation runs.

Validation: one batch of class ids per step, sampled with CFG exactly as ``numprune.llamagen.generate_images``
(batch ``j`` seeded with ``seed + j``, so the images do not depend on what ran before), decoded by the VQ; at the
end of the epoch FID / sFID / IS / precision / recall against the real set (``numprune.eval.image_metrics``),
logged as ``val/fid``, ``val/sfid``, ``val/is``, ``val/precision``, ``val/recall``, ``val/num_generated``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from numprune.errors import NumpruneError
from numprune.lit.llamagen_config import CalibrationSpec, GenerationSpec, GPTSpec, MetricsSpec, VQSpec, class_ids
from numprune.llamagen import balanced_classes, calibration_tokens, generate_tokens, save_pngs, tokens_to_images
from numprune.plan import PruningPlan

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SAMPLING_KEYS = ("cfg_scale", "temperature", "top_k", "top_p")


def load_gpt(spec: GPTSpec, image_size: int, dtype: torch.dtype):
    """The GPT of a grid entry: an official checkpoint, or random weights (``random_init``, tests)."""
    from numprune.models.llamagen import build_llamagen, llamagen_config
    from numprune.models.llamagen_io import load_official_gpt

    if spec.checkpoint is not None and not spec.random_init:
        return load_official_gpt(spec.checkpoint, spec.gpt_model, image_size, dtype=dtype, **spec.config)
    model = build_llamagen(llamagen_config(spec.gpt_model, image_size, **spec.config), dtype=dtype, seed=spec.seed)
    model.config._name_or_path = f"random:{spec.name}"
    return model.eval()


def load_vq(spec: VQSpec):
    from numprune.models.vq import VQConfig, VQModel, load_official_vq

    cfg = VQConfig(**spec.config)
    if spec.checkpoint is not None and not spec.random_init:
        return load_official_vq(spec.checkpoint, cfg)
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        return VQModel(cfg).eval()


class LlamaGenModule(L.LightningModule):
    """Wraps a LlamaGen GPT (``self.model``, what the pruning callbacks prune) and its VQ decoder (``self.vq``).

    Args:
        gpt, vq: what to load (``numprune.lit.llamagen_config.GPTSpec`` / ``VQSpec``).
        calibration, generation, metrics: the config sections of the same names.
        image_size: generation resolution (tokens ``(image_size / 16)^2``); ``eval_size``: resize for metrics.
        precision: the GPT's weights (the VQ stays fp32).
        sample_dir: where PNGs / the ADM ``.npz`` go when ``generation.save_png`` / ``save_npz``.
        calibration_cache: a file keeping the calibration rows of this model and these settings (generating
            128 images per class costs as much as the evaluation; every method and ratio reuses them).
    """

    def __init__(
        self,
        gpt: GPTSpec,
        vq: VQSpec | None = None,
        calibration: CalibrationSpec | None = None,
        generation: GenerationSpec | None = None,
        metrics: MetricsSpec | None = None,
        image_size: int = 384,
        eval_size: int | None = 256,
        precision: str = "bf16",
        sample_dir: str | None = None,
        calibration_cache: str | None = None,
    ) -> None:
        super().__init__()
        if precision not in DTYPES:
            raise NumpruneError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        self.gpt_spec, self.vq_spec = gpt, vq or VQSpec()
        self.calib_spec, self.gen_spec = calibration or CalibrationSpec(), generation or GenerationSpec()
        self.metrics_spec = metrics or MetricsSpec()
        unknown = set(self.calib_spec.sampling) - set(SAMPLING_KEYS)
        if unknown:
            raise NumpruneError(f"calibration.sampling: unknown keys {sorted(unknown)}; known: {SAMPLING_KEYS}")
        self.save_hyperparameters()
        self.image_size, self.eval_size, self.dtype_name = image_size, eval_size, precision
        self.sample_dir, self.calibration_cache = sample_dir, calibration_cache
        self.model: torch.nn.Module | None = None
        self.vq: torch.nn.Module | None = None
        self.plan: PruningPlan | None = None  # set by ScoringCallback (or by hand: PruningPlan.load)
        self.plan_applied = False  # set by CompensationCallback
        self.pruning_stats: list | None = None
        self.calibration_seconds = 0.0
        self.scores: dict[str, float] = {}  # the last validation's metrics, full precision (for result rows)
        self._calib: tuple[Tensor, dict] | None = None
        self._images: list[np.ndarray] = []

    @classmethod
    def from_models(cls, model, vq, gpt: GPTSpec | None = None, **kwargs: Any) -> LlamaGenModule:
        """Wrap already built models (tests, notebooks)."""
        module = cls(gpt or GPTSpec(name=str(getattr(model.config, "_name_or_path", "in-memory"))), **kwargs)
        module.model, module.vq = model, vq
        return module

    def configure_model(self) -> None:
        if self.model is None:  # called by every trainer.validate/fit: load once
            self.model = load_gpt(self.gpt_spec, self.image_size, DTYPES[self.dtype_name])
        if self.vq is None:
            self.vq = load_vq(self.vq_spec)

    # --- calibration: the model's own samples, teacher-forced rows [class, tok_0, ..., tok_{T-2}] -------------
    def calibration_settings(self) -> dict[str, Any]:
        c, num_classes = self.calib_spec, self.model.config.num_classes
        sampling = {"cfg_scale": "model", "temperature": 1.0, "top_k": 0, "top_p": 1.0, **c.sampling}
        if sampling["cfg_scale"] == "model":
            sampling["cfg_scale"] = self.gpt_spec.cfg_scale
        classes = class_ids(c.classes, num_classes, "calibration.classes")
        return {"classes": classes, "per_class": c.images_per_class, "seed": c.seed, **sampling}

    def calibration(self) -> tuple[Tensor, dict]:
        """All calibration rows ``[images_per_class * classes, block_size]`` (made once per module, by the dense
        model) and how they were made (stored in the plan and the result rows)."""
        if self._calib is None:
            self.configure_model()  # also usable outside a Trainer (notebooks)
            s = self.calibration_settings()
            rows = self._cached_rows(s)
            if rows is None:
                start = time.perf_counter()
                sampling = {k: s[k] for k in SAMPLING_KEYS}
                rows = calibration_tokens(
                    self.model, s["classes"], per_class=s["per_class"], batch_size=self.calib_spec.batch_size,
                    seed=s["seed"], **sampling,
                )  # fmt: skip
                with torch.inference_mode(False):
                    rows = rows.clone()  # generated under the trainer's inference mode; pruning leaves it
                self.calibration_seconds = time.perf_counter() - start
                self._save_rows(s, rows)
            n = len(s["classes"])
            info = {
                "dataset": f"{self.calib_spec.source}:{s['per_class']}x{n}",
                "source": f"{self.gpt_spec.name} " + " ".join(f"{k}={s[k]}" for k in ("seed", *SAMPLING_KEYS)),
                "seed": s["seed"],
                "images_per_class": s["per_class"],
                "classes": n,
            }
            self._calib = rows, info
        return self._calib

    def _cache_key(self, settings: dict[str, Any]) -> dict[str, Any]:
        from numprune.prune import model_fingerprint

        return {**settings, "fingerprint": model_fingerprint(self.model), "block_size": self.model.config.block_size}

    def _cached_rows(self, settings: dict[str, Any]) -> Tensor | None:
        path = self.calibration_cache
        if path is None or not Path(path).exists():
            return None
        saved = torch.load(path, weights_only=True)
        return saved["rows"] if saved.get("key") == repr(self._cache_key(settings)) else None

    def _save_rows(self, settings: dict[str, Any], rows: Tensor) -> None:
        trainer = self._trainer  # None outside a Trainer
        if self.calibration_cache is not None and (trainer is None or trainer.is_global_zero):
            path = Path(self.calibration_cache)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")  # renamed into place: an interrupted write leaves no broken cache
            torch.save({"key": repr(self._cache_key(settings)), "rows": rows}, tmp)
            tmp.replace(path)

    # --- validation: generate, decode, score ------------------------------------------------------------------
    def generation_classes(self) -> Tensor:
        g = self.gen_spec
        ids = class_ids(g.classes, self.model.config.num_classes, "generation.classes")
        if g.num_samples % len(ids):
            raise NumpruneError(f"generation.num_samples {g.num_samples} is not a multiple of {len(ids)} classes")
        return balanced_classes(g.num_samples // len(ids), classes=ids)

    def val_dataloader(self):
        if self.trainer.world_size > 1:
            raise NumpruneError("LlamaGen evaluation runs on one device: --trainer='{devices: 1}'")
        classes = self.generation_classes().split(self.gen_spec.batch_size)
        return torch.utils.data.DataLoader(list(enumerate(classes)), batch_size=None)

    def on_validation_epoch_start(self) -> None:
        self._images = []

    def validation_step(self, batch: tuple[int, Tensor], batch_idx: int) -> None:
        j, classes = batch
        g = self.gen_spec
        tokens = generate_tokens(
            self.model, classes, cfg_scale=self.gpt_spec.cfg_scale, cfg_interval=g.cfg_interval,
            temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed + int(j),
        )  # fmt: skip
        self._images.append(tokens_to_images(self.vq, tokens, self.eval_size))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._images:
            return
        images = np.concatenate(self._images)
        self._save_samples(images)
        self.scores = score_images(images, self.metrics_spec, self.device)
        for name, value in self.scores.items():
            self.log(f"val/{name}", value, rank_zero_only=True)

    def _save_samples(self, images: np.ndarray) -> None:
        if self.sample_dir is None:
            return
        if self.gen_spec.save_png:
            save_pngs(images, self.sample_dir)
        if self.gen_spec.save_npz:
            Path(self.sample_dir).parent.mkdir(parents=True, exist_ok=True)
            np.savez(f"{self.sample_dir}.npz", arr_0=images)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.plan is not None:  # the plan travels with the run (shapes of the pruned state dict)
            checkpoint["pruning_plan"] = self.plan.to_dict()
            checkpoint["pruning_plan_applied"] = self.plan_applied


# The real side is the same for every point of a grid (ADM: 10k reference images for P/R); the Inception and
# the reference features are kept for the process, keyed by file, modification time, weights and device.
_EXTRACTOR: dict[tuple, torch.nn.Module] = {}
_REFERENCE: dict[tuple, tuple] = {}


def score_images(images: np.ndarray, spec: MetricsSpec, device: torch.device | str = "cpu") -> dict[str, float]:
    """``numprune.eval.image_metrics.compute_metrics`` with the Inception and the reference features cached."""
    from numprune.eval.image_metrics import extract_features, load_inception, load_reference, metrics_from_features

    weights = None if spec.inception_weights is None else str(Path(spec.inception_weights).resolve())
    key = (weights, str(device))
    if key not in _EXTRACTOR:
        _EXTRACTOR.clear()
        _EXTRACTOR[key] = load_inception(weights, device)
    net = _EXTRACTOR[key]
    ref_path = Path(spec.reference).resolve()
    needs_real = bool({"precision", "recall"} & set(spec.names))
    ref_key = (str(ref_path), ref_path.stat().st_mtime_ns, *key, needs_real)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as compute_metrics
    try:
        if ref_key not in _REFERENCE:
            ref = load_reference(ref_path)
            real = extract_features(ref.images, net, spec.batch_size) if needs_real or ref.stats is None else None
            _REFERENCE.clear()
            _REFERENCE[ref_key] = (ref.stats, real)
        stats, real = _REFERENCE[ref_key]
        gen = extract_features(images, net, spec.batch_size)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out = metrics_from_features(gen, real, stats, spec.names, spec.isc_splits, False, spec.prc_neighborhood)
    return {k: float(v) for k, v in out.items()}
