"""Image metrics on a randomly initialised (Kaiming) Inception of the right architecture: offline and small."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from numprune.eval.image_metrics import (
    Features,
    compute_metrics,
    extract_features,
    frechet_distance,
    frechet_distance_features,
    load_inception,
    load_reference,
    metrics_from_features,
    save_random_inception,
    spatial_features,
    statistics,
)

torch.set_num_threads(2)


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random low-frequency colour images, uint8 [n, size, size, 3]."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    up = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


def add_noise(images: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_inception(tmp_path_factory.mktemp("inception") / "inception_random.pth", seed=0)


@pytest.fixture(scope="module")
def net(weights):
    return load_inception(weights)


@pytest.fixture(scope="module")
def feats(net):
    clean = smooth_images(6)
    return {s: extract_features(add_noise(clean, s) if s else clean, net) for s in (0, 20, 80)}


def test_spatial_features_flatten_in_nhwc_order():
    b, c, h, w = 2, 9, 3, 4
    act = torch.zeros(b, c, h, w)
    for ci in range(c):  # value encodes (channel, row, column)
        act[:, ci] = ci + 10 * torch.arange(h)[:, None] + 100 * torch.arange(w)[None, :]
    out = spatial_features(act, channels=7)
    assert out.shape == (b, h * w * 7)
    for hi, wi, ci in [(0, 0, 3), (2, 1, 6), (1, 3, 0)]:
        assert out[1, (hi * w + wi) * 7 + ci] == ci + 10 * hi + 100 * wi


def test_features_have_the_adm_shapes(feats):
    f = feats[0]
    assert f.pool.shape == (6, 2048) and f.logits.shape == (6, 1008)
    assert f.spatial.shape == (6, 17 * 17 * 7)
    assert (f.spatial >= 0).all() and f.spatial.std() > 0  # post-ReLU Mixed_6d.branch1x1, not degenerate
    assert f.pool.std() > 1e-3  # Kaiming re-init: features are not collapsed to ~0


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(feats):
    fid = [metrics_from_features(feats[s], feats[0], metrics=("fid", "sfid")) for s in (0, 20, 80)]
    assert abs(fid[0]["fid"]) < 1e-6 and abs(fid[0]["sfid"]) < 1e-6
    assert fid[0]["fid"] < fid[1]["fid"] < fid[2]["fid"] and fid[0]["sfid"] < fid[1]["sfid"] < fid[2]["sfid"]
    assert fid[1]["fid"] > 1e-2


@pytest.mark.slow  # ~30 s on 2 cores: two Inception passes each for ours and torch-fidelity's
def test_compute_metrics_matches_torch_fidelity(tmp_path, weights, net):
    torch_fidelity = pytest.importorskip("torch_fidelity")
    from numprune.llamagen.sampling import save_pngs

    real, gen = smooth_images(6, seed=3), add_noise(smooth_images(6, seed=4), 10)
    save_pngs(real, tmp_path / "real")
    save_pngs(gen, tmp_path / "gen")
    np.savez(tmp_path / "gen.npz", arr_0=gen)
    ours = compute_metrics(tmp_path / "gen.npz", tmp_path / "real", extractor=net, isc_splits=2)
    ref = torch_fidelity.calculate_metrics(
        input1=str(tmp_path / "gen"),
        input2=str(tmp_path / "real"),
        cuda=False,
        fid=True,
        isc=True,
        prc=True,
        feature_extractor="inception-v3-compat",
        feature_layer_prc="2048",  # ADM: P/R on pool3, not VGG-16
        isc_splits=2,
        samples_shuffle=False,
        feature_extractor_weights_path=str(weights),
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
    assert ours["is"] == pytest.approx(ref["inception_score_mean"], rel=1e-5)
    assert (ours["precision"], ours["recall"]) == (ref["precision"], ref["recall"])
    assert ours["sfid"] > 0 and ours["num_generated"] == 6


def test_precision_recall_convention_under_mode_collapse(feats):
    real = feats[0]
    collapsed = Features(*(t[:1].repeat(len(t), 1) for t in (real.pool, real.logits, real.spatial)))
    out = metrics_from_features(collapsed, real, metrics=("precision", "recall"))
    assert out["precision"] == 1.0 and out["recall"] == pytest.approx(1 / 6)


def test_adm_reference_statistics_are_used_for_fid(tmp_path, net, feats):
    other = feats[80]  # the stored statistics come from other images than arr_0
    pool, spatial = statistics(other.pool), statistics(other.spatial)
    np.savez(
        tmp_path / "VIRTUAL_ref.npz",
        arr_0=smooth_images(6),
        mu=pool["mu"],
        sigma=pool["sigma"],
        mu_s=spatial["mu"],
        sigma_s=spatial["sigma"],
    )
    ref = load_reference(tmp_path / "VIRTUAL_ref.npz")
    assert ref.stats is not None and ref.images.shape == (6, 32, 32, 3)
    out = compute_metrics(smooth_images(6), ref, extractor=net, metrics=("fid", "sfid"))
    assert out["fid"] == pytest.approx(frechet_distance_features(feats[0].pool, pool), rel=1e-6)
    assert out["sfid"] == pytest.approx(frechet_distance_features(feats[0].spatial, spatial), rel=1e-6)
    assert out["fid"] > 1e-2 and out["sfid"] > 1e-3  # not against arr_0 (the same images: that would be 0)
    with pytest.raises(ValueError, match="need real images"):
        metrics_from_features(feats[0], None, ref.stats, metrics=("precision",))


@pytest.mark.slow  # two O(D^3) eigenvalue problems at D ~ 2000
def test_small_n_frechet_distance_equals_torch_fidelity_formula(feats):
    for attr in ("pool", "spatial"):
        gen, real = getattr(feats[0], attr), getattr(feats[80], attr)
        expect = frechet_distance(statistics(gen), statistics(real))
        assert frechet_distance_features(gen, statistics(real)) == pytest.approx(expect, rel=1e-6)
