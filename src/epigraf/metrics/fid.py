"""Fréchet Inception Distance, Kernel Inception Distance, feature statistics and the real-statistics cache.

* FID (Heusel et al. 2017): ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), with ``scipy.linalg.sqrtm``; covariances
  are unbiased (ddof 1), statistics in float64.
* KID (Bińkowski et al. 2018): the unbiased MMD² estimate with the cubic polynomial kernel
  k(x, y) = (xᵀy / d + 1)³, averaged over ``num_subsets`` random subsets of m = min(n_real, n_fake,
  ``max_subset_size``) features drawn without replacement from each set (StyleGAN2-ADA protocol: 100
  subsets of 1000). Reported as is (papers often quote KID × 10³).
* Real statistics are cached per dataset and detector in ``default_cache_dir()``: the key hashes the
  dataset's absolute path, size and modification time (for a folder: total size, file count and newest
  mtime), the image resolution and count, and the detector identity (which includes its weights' SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from epigraf.files import CACHE_ENV, atomic_write
from epigraf.files import cache_dir as epigraf_cache_dir
from epigraf.metrics.inception import FeatureExtractor
from epigraf.metrics.sampling import MetricDataset, num_real_images, real_images
from epigraf.progress import track

__all__ = [
    "CACHE_ENV_VAR",
    "FeatureMoments",
    "MomentAccumulator",
    "RealStatistics",
    "default_cache_dir",
    "extract_features",
    "frechet_distance",
    "kernel_inception_distance",
    "real_statistics",
    "real_stats_cache_key",
]

log = logging.getLogger(__name__)

CACHE_ENV_VAR = CACHE_ENV
CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------- math


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """FID between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (means [D], covariances [D, D]).

    When Σ₁Σ₂ is singular and ``sqrtm`` fails, eps·I is added to both covariances. A complex square root
    whose diagonal has imaginary parts below 1e-3 is taken as real; larger ones raise ValueError.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape} {mu2.shape}, covariances {sigma1.shape} "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased MMD² with k(x, y) = (xᵀy/d + 1)³ averaged over random subsets (see the module docstring).

    real [n_r, D], fake [n_f, D] → float; about 0 for samples of one distribution (it can be negative).
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {real.shape} and {fake.shape}")
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 fake samples, got {len(real)} and {len(fake)}")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2 * kxy.mean()
    return float(total / num_subsets)


@dataclass(frozen=True)
class FeatureMoments:
    """Mean [D] and unbiased covariance [D, D] (float64) of ``count`` feature vectors."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def fid(self, other: FeatureMoments) -> float:
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)


class MomentAccumulator:
    """Streaming mean and covariance of feature batches, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def update(self, features: np.ndarray | Tensor) -> None:
        if isinstance(features, Tensor):
            x = features.detach().cpu().double().numpy()
        else:
            x = np.asarray(features, np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D], got {list(x.shape)}")
        if self.total is None:
            self.total, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        self.count += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def moments(self) -> FeatureMoments:
        if self.total is None or self.outer is None or self.count < 2:
            raise ValueError(f"feature statistics need at least 2 samples, got {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return FeatureMoments(mean, cov, self.count)


def extract_features(batches: Iterable[Tensor], extractor: FeatureExtractor,
                     keep_features: bool = False) -> tuple[FeatureMoments, np.ndarray | None]:
    """Run the detector over uint8 batches; → moments and (with ``keep_features``) float32 [N, D] features."""
    acc, kept = MomentAccumulator(), []
    for images in batches:
        feats = extractor(images).detach().float().cpu()
        acc.update(feats)
        if keep_features:
            kept.append(feats.numpy())
    return acc.moments(), (np.concatenate(kept) if keep_features else None)


# ------------------------------------------------------------------------------------ real statistics


def default_cache_dir() -> Path:
    """epigraf's cache (:func:`epigraf.files.cache_dir`: ``$EPIGRAF_CACHE``, else ``~/.cache/epigraf``)."""
    return epigraf_cache_dir()


def _fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path).resolve()
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        size, count, mtime = 0, 0, p.stat().st_mtime_ns
        for root, dirs, files in os.walk(p):
            for name in dirs:
                mtime = max(mtime, os.stat(os.path.join(root, name)).st_mtime_ns)
            for name in files:
                st = os.stat(os.path.join(root, name))
                size, count, mtime = size + st.st_size, count + 1, max(mtime, st.st_mtime_ns)
        return {"path": str(p), "size": size, "files": count, "mtime_ns": mtime}
    raise FileNotFoundError(f"dataset not found: {p}")


def real_stats_cache_key(dataset: MetricDataset, detector_identity: str) -> tuple[str, dict[str, Any]] | None:
    """(hex key, the description it hashes), or None for datasets without a ``path`` (not cached)."""
    path = getattr(dataset, "path", None)
    if path is None:
        return None
    description = {
        "version": CACHE_VERSION,
        "dataset": _fingerprint(path),
        "resolution": int(dataset.resolution),
        "num_images": num_real_images(dataset),
        "detector": detector_identity,
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return digest[:32], description


@dataclass
class RealStatistics:
    """Detector statistics of every real image (no flips). ``features`` is None unless they were asked for."""

    moments: FeatureMoments
    features: np.ndarray | None = None
    cache_path: Path | None = None
    cache_hit: bool = False


def _load_cached(path: Path, description: dict[str, Any], need_features: bool) -> RealStatistics | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["description"]) != json.dumps(description, sort_keys=True):
                return None
            if need_features and "features" not in data.files:
                return None
            moments = FeatureMoments(data["mean"], data["cov"], int(data["count"]))
            features = data["features"] if need_features else None
    except (OSError, KeyError, ValueError) as err:
        log.warning("ignoring unreadable real-statistics cache %s: %s", path, err)
        return None
    return RealStatistics(moments, features, path, cache_hit=True)


def _save_cached(path: Path, description: dict[str, Any], stats: RealStatistics) -> None:
    arrays = {"mean": stats.moments.mean, "cov": stats.moments.cov, "count": np.int64(stats.moments.count),
              "description": np.str_(json.dumps(description, sort_keys=True))}
    if stats.features is not None:
        arrays["features"] = stats.features
    with atomic_write(path) as tmp, tmp.open("wb") as f:  # a file object: np.savez appends no ".npz"
        np.savez(f, **arrays)


def real_statistics(
    dataset: MetricDataset,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    keep_features: bool = False,
    cache_dir: str | os.PathLike | None | bool = None,
    progress: bool = False,
) -> RealStatistics:
    """Detector statistics of all real images, read from or written to the cache.

    cache_dir: a folder, None for ``default_cache_dir()``, or False to bypass the cache. ``keep_features``
    also returns (and caches) the raw features, which KID needs. ``progress``: a bar with ETA on stderr.
    """
    keyed = None if cache_dir is False else real_stats_cache_key(dataset, extractor.identity)
    path = None
    if keyed is not None:
        key, description = keyed
        folder = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        path = folder / "metrics" / f"real-{key}.npz"
        if path.is_file():
            cached = _load_cached(path, description, keep_features)
            if cached is not None:
                log.info("real statistics: cache hit %s", path)
                return cached
    n = num_real_images(dataset)
    log.info("real statistics: extracting features of %d images", n)
    with torch.no_grad():
        batches = track(real_images(dataset, batch_size), n, "real-image features", enabled=progress)
        moments, features = extract_features(batches, extractor, keep_features)
    stats = RealStatistics(moments, features, path, cache_hit=False)
    if keyed is not None and path is not None:
        _save_cached(path, keyed[1], stats)
    return stats
