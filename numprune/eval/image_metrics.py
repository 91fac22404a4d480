"""FID, sFID, Inception Score, Precision and Recall in the ADM protocol, on torch-fidelity's Inception.

One pass of torch-fidelity's ``inception-v3-compat`` (the 2015-12-05 TF Inception with TF1 bilinear resize)
gives per image: pool3 (2048, FID and P/R), unbiased logits (1008, IS) and the sFID features: the first 7
channels of ``Mixed_6d.branch1x1`` (ADM's ``mixed_6/conv``, after BN + ReLU), ``17 x 17 x 7 = 2023`` values
flattened in NHWC order so that ADM's precomputed ``mu_s`` / ``sigma_s`` apply (LLAMAGEN.md §3.2, §4.1).
The metrics themselves are torch-fidelity's functions (FID via eigenvalues, IS, P/R with k = 3), with the
convention *generated = input1 / features_1, real = input2 / features_2*.

References: a folder of images, an ``.npz`` with ``arr_0`` (uint8 NHWC), or ADM's
``VIRTUAL_imagenet256_labeled.npz``, whose stored ``mu``/``sigma`` and ``mu_s``/``sigma_s`` (whole-dataset
statistics) are used for FID and sFID while P/R use its 10k ``arr_0`` images, exactly as ADM's evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

SFID_CHANNELS = 7
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _fidelity():
    try:
        import torch_fidelity  # noqa: F401
        from torch_fidelity import metric_fid, metric_isc, metric_prc
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("image metrics need torch-fidelity: pip install 'torch-fidelity==0.4.0'") from err
    return FeatureExtractorInceptionV3, metric_fid, metric_isc, metric_prc


def load_inception(weights_path: str | Path | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """torch-fidelity's Inception; ``weights_path`` for offline use (None: download, cached in TORCH_HOME)."""
    extractor_cls: Any = _fidelity()[0]
    path = None if weights_path is None else str(weights_path)
    return extractor_cls("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=path).to(
        device
    )


def save_random_inception(path: str | Path, seed: int = 0) -> Path:
    """A randomly initialised Inception of the right architecture for offline tests. Convolutions and the
    classifier are Kaiming re-initialised: PyTorch's default init shrinks activations through ~90 layers until
    every feature (and so every FID) is about 0 (OFFLINE.md)."""
    # the constructor loads weights; there are none yet: a subclass whose load_state_dict does nothing
    unloaded = type("_Unloaded", (_fidelity()[0],), {"load_state_dict": lambda self, *args, **kwargs: None})

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)
    net = unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.reset_running_stats()
    torch.save(net.state_dict(), path)
    return path


def spatial_features(act: Tensor, channels: int = SFID_CHANNELS) -> Tensor:
    """``act [B, C, H, W]`` -> ``[B, H*W*channels]``: first ``channels`` channels, flattened in NHWC order
    (ADM reads the TF tensor ``mixed_6/conv`` as ``[B, 17, 17, C][..., :7]``)."""
    return act[:, :channels].permute(0, 2, 3, 1).reshape(act.shape[0], -1)


@dataclass
class Features:
    pool: Tensor  # [N, 2048]
    logits: Tensor  # [N, 1008], unbiased
    spatial: Tensor  # [N, 2023]


@torch.no_grad()
def extract_features(images: np.ndarray | Tensor, extractor: nn.Module, batch_size: int = 64) -> Features:
    """Features of uint8 images (``[N, H, W, 3]`` array or ``[N, 3, H, W]`` tensor; any size)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"expected uint8 images [N, H, W, 3] (array) or [N, 3, H, W] (tensor), got {tuple(x.shape)} {x.dtype}"
        )
    device = next(extractor.parameters()).device
    grabbed: list[Tensor] = []
    mixed: Any = getattr(extractor, "Mixed_6d")  # noqa: B009  (torch-fidelity's submodule)
    hook = mixed.branch1x1.register_forward_hook(
        lambda _m, _i, out: grabbed.append(spatial_features(out).float().cpu())
    )
    pools, logits = [], []
    try:
        for batch in x.split(batch_size):
            pool, logit = extractor(batch.to(device))
            pools.append(pool.cpu())
            logits.append(logit.cpu())
    finally:
        hook.remove()
    return Features(torch.cat(pools), torch.cat(logits), torch.cat(grabbed))


def load_images(source: str | Path | np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` from an array, an ``.npz`` (``arr_0``) or a folder of images (sorted names)."""
    if isinstance(source, np.ndarray):
        arr = source
    else:
        path = Path(source)
        if path.is_dir():
            from PIL import Image

            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"no images in {path}")
            arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        else:
            with np.load(path) as data:
                arr = data["arr_0"]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {arr.shape} {arr.dtype}")
    return arr


@dataclass
class Reference:
    """Real-image side: images for P/R (and for statistics when none are stored), optional ADM statistics."""

    images: np.ndarray
    stats: dict[str, np.ndarray] | None = None  # mu, sigma, mu_s, sigma_s (ADM reference batch)


def load_reference(source: str | Path | np.ndarray) -> Reference:
    if isinstance(source, (str, Path)) and Path(source).is_file():
        with np.load(source) as data:
            keys = set(data.files)
            stats = {k: data[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in keys} if "mu" in keys else None
            return Reference(load_images(data["arr_0"]), stats)
    return Reference(load_images(source))


def statistics(features: Tensor) -> dict[str, np.ndarray]:
    x = features.double().numpy()
    return {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}


def frechet_distance(stats1: dict[str, np.ndarray], stats2: dict[str, np.ndarray]) -> float:
    """torch-fidelity's FID formula on two (mu, sigma) pairs, both in float64 (O(D^3): ~seconds at D = 2048)."""
    metric_fid = _fidelity()[1]
    as64 = [
        {"mu": np.asarray(s["mu"], np.float64), "sigma": np.asarray(s["sigma"], np.float64)} for s in (stats1, stats2)
    ]
    return float(metric_fid.fid_statistics_to_metric(as64[0], as64[1], verbose=False)["frechet_inception_distance"])


def frechet_distance_features(gen: Tensor, stats: dict[str, np.ndarray]) -> float:
    """The same Frechet distance from generated features ``[n, D]`` and real (mu, sigma), exact and cheap when
    ``n <= D`` (quick small-N evaluations, tests).

    With centred features ``C`` (``S_1 = C^T C / (n - 1)``) the non-zero eigenvalues of ``S_1 S_2`` are those of
    the ``n x n`` PSD matrix ``C S_2 C^T / (n - 1)``, so ``tr sqrt(S_1 S_2)`` needs one small symmetric
    eigenproblem instead of a general ``D x D`` one (seconds at D = 2048 on a CPU).
    """
    x = gen.double()
    c, d = x - x.mean(0), len(x) - 1
    mu2, sigma2 = (torch.as_tensor(np.asarray(stats[k]), dtype=torch.float64) for k in ("mu", "sigma"))
    inner = c @ sigma2 @ c.T / d  # [n, n]
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = x.mean(0) - mu2
    return float(diff @ diff + c.pow(2).sum() / d + sigma2.trace() - 2 * tr_sqrt)


def _fid(gen: Tensor, real: Tensor | None, real_stats: dict[str, np.ndarray] | None) -> float:
    if real_stats is None and real is None:
        raise ValueError("FID needs real features or reference statistics")
    stats = real_stats if real_stats is not None else statistics(cast(Tensor, real))
    if len(gen) <= gen.shape[1]:
        return frechet_distance_features(gen, stats)
    return frechet_distance(statistics(gen), stats)


def metrics_from_features(
    gen: Features,
    real: Features | None = None,
    real_stats: dict[str, np.ndarray] | None = None,
    metrics: Sequence[str] = ("fid", "sfid", "is", "precision", "recall"),
    isc_splits: int = 10,
    isc_shuffle: bool = False,
    prc_neighborhood: int = 3,
) -> dict[str, float]:
    """Metrics of generated features against real features and/or stored statistics (``mu``, ``sigma``,
    ``mu_s``, ``sigma_s``: used for FID / sFID when given, as ADM's evaluator; P/R always need real features)."""
    _, _, metric_isc, metric_prc = _fidelity()
    unknown = set(metrics) - {"fid", "sfid", "is", "precision", "recall"}
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}")
    out: dict[str, float] = {"num_generated": float(len(gen.pool))}
    if "fid" in metrics:
        stats = None if real_stats is None else {"mu": real_stats["mu"], "sigma": real_stats["sigma"]}
        out["fid"] = _fid(gen.pool, None if stats or real is None else real.pool, stats)
    if "sfid" in metrics:
        stats = None
        if real_stats is not None:
            if "mu_s" not in real_stats:
                raise ValueError("the reference statistics have no mu_s / sigma_s for sFID")
            stats = {"mu": real_stats["mu_s"], "sigma": real_stats["sigma_s"]}
        out["sfid"] = _fid(gen.spatial, None if stats or real is None else real.spatial, stats)
    if "is" in metrics:
        isc = metric_isc.isc_features_to_metric(gen.logits, splits=isc_splits, shuffle=isc_shuffle)
        out["is"], out["is_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    if {"precision", "recall"} & set(metrics):
        if real is None:
            raise ValueError("precision / recall need real images (features), not only statistics")
        prc = metric_prc.prc_features_to_metric(gen.pool, real.pool, prc_neighborhood=prc_neighborhood, verbose=False)
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
    return out


def compute_metrics(
    generated: str | Path | np.ndarray,
    real: str | Path | np.ndarray | Reference,
    *,
    weights_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    metrics: Sequence[str] = ("fid", "sfid", "is", "precision", "recall"),
    isc_splits: int = 10,
    isc_shuffle: bool = False,
    prc_neighborhood: int = 3,
    extractor: nn.Module | None = None,
) -> dict[str, float]:
    """Image metrics of ``generated`` (input1) against ``real`` (input2): folders, ``.npz`` files or arrays.

    IS uses ``isc_splits`` chunks in file order (ADM: 5000-image chunks of 50k, i.e. 10 splits, no shuffle).
    P/R use Inception pool3 features as ADM (torch-fidelity's own ``calculate_metrics(prc=True)`` defaults to
    VGG-16 features instead). TF32 is off while features are computed (LlamaGen's sampler turns it on).
    """
    ref = real if isinstance(real, Reference) else load_reference(real)
    net = extractor if extractor is not None else load_inception(weights_path, device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        gen = extract_features(load_images(generated), net, batch_size)
        needs_real = bool({"precision", "recall"} & set(metrics)) or ref.stats is None
        real_f = extract_features(ref.images, net, batch_size) if needs_real else None
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return metrics_from_features(gen, real_f, ref.stats, metrics, isc_splits, isc_shuffle, prc_neighborhood)


# The real side is the same for every point of a grid (ADM: 10k reference images for P/R); the Inception and
# the reference features are kept for the process, keyed by file, modification time, weights and device.
_EXTRACTOR: dict[tuple, nn.Module] = {}
_REFERENCE: dict[tuple, tuple] = {}


def score_images(
    images: np.ndarray,
    reference: str | Path,
    names: Sequence[str],
    inception_weights: str | Path | None = None,
    batch_size: int = 64,
    isc_splits: int = 10,
    prc_neighborhood: int = 3,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The metrics ``names`` of generated ``images`` against ``reference`` (as ``compute_metrics``), with the
    Inception and the reference features cached across calls (every point of a grid shares them)."""
    weights = None if inception_weights is None else str(Path(inception_weights).resolve())
    key = (weights, str(device))
    if key not in _EXTRACTOR:
        _EXTRACTOR.clear()
        _EXTRACTOR[key] = load_inception(weights, device)
    net = _EXTRACTOR[key]
    ref_path = Path(reference).resolve()
    needs_real = bool({"precision", "recall"} & set(names))
    ref_key = (str(ref_path), ref_path.stat().st_mtime_ns, *key, needs_real)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as compute_metrics
    try:
        if ref_key not in _REFERENCE:
            ref = load_reference(ref_path)
            real = extract_features(ref.images, net, batch_size) if needs_real or ref.stats is None else None
            _REFERENCE.clear()
            _REFERENCE[ref_key] = (ref.stats, real)
        stats, real = _REFERENCE[ref_key]
        gen = extract_features(images, net, batch_size)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out = metrics_from_features(gen, real, stats, list(names), isc_splits, False, prc_neighborhood)
    return {k: float(v) for k, v in out.items()}
