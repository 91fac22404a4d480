"""``LlamaGenModule``: a LlamaGen GPT + VQ decoder under Lightning. Validation generates images and scores them.

The same pattern as ``CausalLMModule``: the models are loaded in ``configure_model``; the scoring and compensation
callbacks (``numprune.lit.callbacks``) take their calibration rows from ``calibration()`` (here: the model's own
samples, ``numprune.llamagen.sampling.calibration_tokens``) and store the plan on the module before validation runs.

Validation: one batch of class ids per step, sampled with CFG exactly as ``numprune.llamagen.sampling.generate_images``
(batch ``j`` seeded with ``seed + j``, so the images do not depend on what ran before), decoded by the VQ; at the
end of the epoch FID / sFID / IS / precision / recall against the real set (``numprune.eval.image_metrics``),
logged as ``val/fid``, ``val/sfid``, ``val/is``, ``val/precision``, ``val/recall``, ``val/num_generated``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from numprune.config import DTYPE_NAMES, parse_dtype
from numprune.errors import NumpruneError
from numprune.eval.image_metrics import score_images
from numprune.lit.llamagen_specs import (
    METRIC_NAMES,
    SAMPLING_KEYS,
    CalibrationSpec,
    GenerationSpec,
    GPTSpec,
    MetricsSpec,
    VQSpec,
    class_ids,
    gpt_config_of,
    load_gpt,
    load_vq,
)
from numprune.lit.module import PrunableModule
from numprune.llamagen.sampling import (
    balanced_classes,
    calibration_tokens,
    generate_tokens,
    save_pngs,
    tokens_to_images,
)


class LlamaGenModule(PrunableModule):
    """Wraps a LlamaGen GPT (``self.model``, what the pruning callbacks prune) and its VQ decoder (``self.vq``).

    Args:
        model, vq: what to load (``numprune.lit.llamagen_specs.GPTSpec`` / ``VQSpec``).
        calibration, generation, metrics: how calibration rows and evaluation images are sampled and scored.
        image_size: generation resolution (tokens ``(image_size / 16)^2``); ``eval_size``: resize for metrics.
        precision: the GPT's weights (the VQ stays fp32).
        sample_dir: where PNGs / the ADM ``.npz`` go when ``generation.save_png`` / ``save_npz`` (the runner sets
            it next to the results).
        calibration_cache: a file keeping the calibration rows of this model and these settings (generating
            128 images per class costs as much as the evaluation; every method and ratio reuses them).
    """

    def __init__(
        self,
        model: GPTSpec,
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
        if precision not in DTYPE_NAMES:
            raise NumpruneError(f"precision must be one of {', '.join(DTYPE_NAMES)}, got {precision!r}")
        self.gpt_spec, self.vq_spec = model, vq or VQSpec()
        self.calib_spec, self.gen_spec = calibration or CalibrationSpec(), generation or GenerationSpec()
        self.metrics_spec = metrics or MetricsSpec()
        unknown = set(self.calib_spec.sampling) - set(SAMPLING_KEYS)
        if unknown:
            raise NumpruneError(f"calibration.sampling: unknown keys {sorted(unknown)}; known: {SAMPLING_KEYS}")
        unknown = set(self.metrics_spec.names) - set(METRIC_NAMES)
        if unknown:
            raise NumpruneError(f"metrics.names: unknown metrics {sorted(unknown)}; known: {METRIC_NAMES}")
        self.save_hyperparameters()
        self.image_size, self.eval_size, self.dtype_name = image_size, eval_size, precision
        self.sample_dir, self.calibration_cache = sample_dir, calibration_cache
        self.vq: Any = None
        self.calibration_seconds = 0.0
        self.scores: dict[str, float] = {}  # the last validation's metrics, full precision (for result rows)
        self._calib: tuple[Tensor, dict] | None = None
        self._images: list[np.ndarray] = []

    @classmethod
    def from_models(cls, model, vq, spec: GPTSpec | None = None, **kwargs: Any) -> LlamaGenModule:
        """Wrap already built models (tests, notebooks)."""
        module = cls(spec or GPTSpec(name=str(getattr(model.config, "_name_or_path", "") or "in-memory")), **kwargs)
        module.model, module.vq = model, vq
        return module

    def configure_model(self) -> None:
        if self.model is None:  # called by every trainer.validate/fit: load once
            self.model = load_gpt(self.gpt_spec, self.image_size, parse_dtype(self.dtype_name))
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

    def calibration(self, datamodule: Any = None) -> tuple[Tensor, dict]:
        """All calibration rows ``[images_per_class * classes, block_size]`` (made once per module, by the dense
        model) and how they were made (stored in the plan and the result rows)."""
        if self._calib is None:
            self.configure_model()  # also usable outside a Trainer (notebooks)
            s = self.calibration_settings()
            rows = self._cached_rows(s)
            if rows is None:
                start = time.perf_counter()
                sampling = {k: s[k] for k in SAMPLING_KEYS}
                # sample on the trainer's device even before the strategy moved the model there (setup)
                home = next(self.model.parameters()).device
                device = self.trainer.strategy.root_device if self._trainer is not None else home
                try:
                    rows = calibration_tokens(
                        self.model.to(device), s["classes"], per_class=s["per_class"],
                        batch_size=self.calib_spec.batch_size, seed=s["seed"], **sampling,
                    ).cpu()  # fmt: skip
                finally:
                    self.model.to(home)
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
        from numprune.provenance import model_fingerprint

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
        m = self.metrics_spec
        self.scores = score_images(
            images, m.reference, m.names, m.inception_weights, m.batch_size, m.isc_splits, m.prc_neighborhood,
            self.device,
        )  # fmt: skip
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

    # --- what the runner asks ----------------------------------------------------------------------------
    def preflight(self, datamodule: Any = None) -> list[str]:
        problems = []
        files = [(f"model[{self.gpt_spec.name}].checkpoint", self.gpt_spec.checkpoint, self.gpt_spec.random_init)]
        files += [("vq.checkpoint", self.vq_spec.checkpoint, self.vq_spec.random_init)]
        files += [("metrics.reference", self.metrics_spec.reference, False)]
        if self.metrics_spec.inception_weights is not None:
            files.append(("metrics.inception_weights", self.metrics_spec.inception_weights, False))
        for what, path, random_init in files:
            if random_init:
                continue
            if path is None:
                problems.append(f"{what} is null (give a path, or random_init: true for a test model)")
            elif not Path(path).exists():
                problems.append(f"{what} {path} does not exist")
        try:
            num_classes = gpt_config_of(self.gpt_spec, self.image_size).num_classes
            class_ids(self.calib_spec.classes, num_classes, "calibration.classes")
            n = len(class_ids(self.gen_spec.classes, num_classes, "generation.classes"))
        except (NumpruneError, KeyError, TypeError, ValueError) as err:
            return [*problems, f"model[{self.gpt_spec.name}]: {err}"]
        if self.gen_spec.num_samples % n:
            problems.append(f"generation.num_samples {self.gen_spec.num_samples} is not a multiple of {n} classes")
        return problems

    def run_context(self, datamodule: Any = None) -> dict[str, Any]:
        from numprune.results import file_hash

        mc, c = gpt_config_of(self.gpt_spec, self.image_size), self.calib_spec
        n = len(class_ids(c.classes, mc.num_classes, "calibration.classes"))
        ckpt = self.gpt_spec.checkpoint
        return {
            "model": self.gpt_spec.name,
            "model_hash": file_hash(ckpt) if ckpt and not self.gpt_spec.random_init and Path(ckpt).is_file() else "",
            "seed": self.gen_spec.seed,
            "calib_dataset": f"{c.source}:{c.images_per_class}x{n}",
            "calib_nsamples": c.images_per_class * n,
            "calib_seqlen": mc.block_size,
        }

    def planned_rows(self, datamodule: Any = None) -> list[dict[str, Any]]:
        eval_dataset = f"{Path(self.metrics_spec.reference).stem}:{self.gen_spec.num_samples}"
        return [{"eval_dataset": eval_dataset, "eval_seqlen": self.eval_size or "", "metric": m}
                for m in self.metrics_spec.names]  # fmt: skip

    def measured_rows(self, datamodule: Any = None) -> list[dict[str, Any]]:
        from numprune.results import portable

        g = self.gen_spec
        sampling = f"cfg={self.gpt_spec.cfg_scale} temperature={g.temperature} top_k={g.top_k} top_p={g.top_p}"
        common = {"eval_source": f"{portable(self.metrics_spec.reference)} {sampling}",
                  "eval_windows": int(self.scores.get("num_generated", 0))}  # fmt: skip
        rows = [{**r, **common, "value": self.scores[r["metric"]]} for r in self.planned_rows()]
        if self.plan is not None and self.calibration_seconds:  # 0: the calibration rows came from the cache
            rows.append({**rows[0], "metric": "calib_generate_seconds", "value": self.calibration_seconds})
        return rows

    def save_pruned_model(self, path: Path, datamodule: Any = None) -> None:
        from numprune.llamagen.checkpoint import save_llamagen

        save_llamagen(self.model, path, plan=self.plan, overwrite=True)

    def set_output(self, folder: Path | None, stem: str) -> None:
        if folder is None:
            return
        self.sample_dir = str(folder / "samples" / stem)
        c = self.calib_spec
        self.calibration_cache = str(
            folder / "calibration" / f"{self.gpt_spec.name}-{c.source}-{c.images_per_class}-seed{c.seed}.pt"
        )
