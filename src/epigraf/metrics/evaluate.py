"""Metric protocols (docs/method.md §7.1): ``fid2k_full``, ``fid50k_full``, ``kid50k_full`` and ``consistency``;
``geometry`` (the built-in dataset's true shapes) is named here and computed by ``epigraf.metrics.geometry``
(``geometry_metric``), which reads the dataset's folder.

*_full: the detector features of **all** real images (no x-flips) against N fakes from the generator
(G_ema) with ψ = 1, random StyleGAN noise and the original's stochastic ray sampling (unless
``deterministic``), rendered at the dataset's resolution with the model's ray steps, batch 4 by default,
cameras from ``sampling.CAMERA_MODES`` ("dataset" or "random", both worth reporting), labels and the
pose-conditioning camera (GPC) of a conditional model set as in ``epigraf.metrics.sampling``.

    from epigraf.metrics import InceptionFeatures, compute_metric
    result = compute_metric(G, ImageDataset("data/ffhq.zip"), "fid50k_full", "dataset", InceptionFeatures())
    print(result.value, result.protocol)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epigraf.files import strict_json
from epigraf.metrics.consistency import consistency_metric
from epigraf.metrics.fid import RealStatistics, extract_features, kernel_inception_distance, real_statistics
from epigraf.metrics.inception import FeatureExtractor
from epigraf.metrics.sampling import (
    CAMERA_MODES,
    MetricDataset,
    images_to_uint8,
    num_real_images,
    sample_conditions,
)
from epigraf.nn.generator import Generator
from epigraf.progress import track

__all__ = ["METRICS", "MetricResult", "MetricSpec", "compute_metric", "generate_images", "metric_spec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    """kind: "fid" | "kid" | "consistency" | "geometry"; num: fakes (FID/KID), latents (consistency) or views
    per class (geometry)."""

    name: str
    kind: str
    num: int
    kid_subsets: int = 100
    kid_subset_size: int = 1000


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("fid2k_full", "fid", 2048),
        MetricSpec("fid50k_full", "fid", 50000),
        MetricSpec("kid50k_full", "kid", 50000),
        MetricSpec("consistency", "consistency", 64),
        MetricSpec("geometry", "geometry", 8),
    )
}


def metric_spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return METRICS[name]


@dataclass
class MetricResult:
    """One metric under one camera mode. ``protocol`` is a one-line description; ``details`` holds the
    numbers behind it (and, for consistency, PSNR and the valid fraction)."""

    metric: str
    cameras: str
    value: float
    num_real: int
    num_fake: int
    protocol: str
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (non-finite numbers become None, so the output is strict JSON)."""
        return strict_json({"metric": self.metric, "cameras": self.cameras, "value": self.value,
                             "num_real": self.num_real, "num_fake": self.num_fake, "protocol": self.protocol,
                             "details": self.details, "seconds": round(self.seconds, 3)})


def generate_images(
    G: Generator,
    dataset: MetricDataset | None,
    num: int,
    camera_mode: str,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    resolution: int | None = None,
    truncation_psi: float = 1.0,
    deterministic: bool = False,
) -> Iterator[Tensor]:
    """uint8 fakes [b, 3, R, R] in batches, as the metric protocols draw them (reproducible for a given
    ``seed`` and ``batch_size``).

    Latents, cameras and labels come from a CPU generator seeded with ``seed``; the StyleGAN noise and ray
    sampling use torch's global RNG, seeded with ``seed`` inside ``torch.random.fork_rng`` (the caller's
    RNG state is restored afterwards).
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    angles_all, labels_all = sample_conditions(G.cfg.camera, G.c_dim, dataset, num, camera_mode, gen)
    z_all = torch.randn(num, G.z_dim, generator=gen)
    G.eval()
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, num, batch_size):
            sl = slice(start, min(start + batch_size, num))
            angles = angles_all[sl].to(device)
            c = None if labels_all is None else labels_all[sl].to(device)
            out = G(z_all[sl].to(device), c, angles, truncation_psi=truncation_psi, noise_mode="random",
                    deterministic=deterministic, resolution=resolution, camera_angles_cond=angles)
            yield images_to_uint8(out.image)


def _check_resolution(G: Generator, dataset: MetricDataset, resolution: int | None) -> int:
    res = resolution or G.cfg.image_resolution
    if int(dataset.resolution) != res:
        raise ValueError(
            f"the dataset's images are {dataset.resolution}² but the fakes would be rendered at {res}²; "
            f"FID/KID compare images of one resolution: use a dataset at {res}², or render the fakes at the "
            f"dataset's resolution (resolution={dataset.resolution}, `--resolution {dataset.resolution}`)"
        )
    return res


def _protocol(spec: MetricSpec, camera_mode: str, num_real: int, num_fake: int, res: int, deterministic: bool,
              detector: str) -> str:
    standard = "" if num_fake == spec.num else f" (non-standard: {num_fake} fakes instead of {spec.num})"
    cams = "poses of random dataset images" if camera_mode == "dataset" else "the configured camera distribution"
    what = "FID" if spec.kind == "fid" else f"KID ({spec.kid_subsets} subsets of ≤{spec.kid_subset_size})"
    return (f"{spec.name}: {what}, all {num_real} real images (no x-flips) vs {num_fake} fakes{standard} from "
            f"G_ema at {res}², ψ=1, random noise, {'deterministic' if deterministic else 'stochastic'} ray "
            f"sampling, cameras: {camera_mode} ({cams}); detector {detector}")


def compute_metric(
    G: Generator,
    dataset: MetricDataset,
    name: str,
    camera_mode: str = "dataset",
    feature_extractor: FeatureExtractor | None = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    *,
    num: int | None = None,
    seed: int = 0,
    resolution: int | None = None,
    deterministic: bool = False,
    cache_dir: str | os.PathLike | None | bool = None,
    real_stats: RealStatistics | None = None,
    real_batch_size: int = 64,
    progress: bool = False,
) -> MetricResult:
    """Compute one metric of ``METRICS`` under one camera mode ("dataset" | "random").

    feature_extractor: any ``FeatureExtractor`` (``InceptionFeatures()`` for comparable numbers; tests
    inject tiny networks); not needed for ``consistency``. ``geometry`` is not computed here
    (``epigraf.metrics.geometry.geometry_metric``). num overrides the number of fakes (or latents),
    which makes the result non-standard (said so in ``protocol``). real_stats: precomputed real statistics
    (e.g. shared across metrics); otherwise they are read from / written to the cache (``cache_dir``: a
    folder, None = default, False = off). progress: bars with ETA on stderr for the long loops.
    """
    spec = metric_spec(name)
    if camera_mode not in CAMERA_MODES:
        raise ValueError(f"unknown camera mode {camera_mode!r}; choose from {CAMERA_MODES}")
    n = spec.num if num is None else int(num)
    minimum = 1 if spec.kind == "consistency" else 2
    if n < minimum:
        raise ValueError(f"{name} needs at least {minimum} samples, got {n}")
    t0 = time.perf_counter()
    if spec.kind == "geometry":
        raise ValueError("the geometry metric measures against a built-in dataset's true shapes: use "
                         "epigraf.metrics.geometry.geometry_metric(G, folder)")
    if spec.kind == "consistency":
        r = consistency_metric(G, dataset, camera_mode, num_latents=n, batch_size=batch_size, device=device,
                               seed=seed, resolution=resolution, progress=progress)
        details = {"psnr": r.psnr, "valid_fraction": r.valid_fraction, **r.protocol}
        protocol = (f"consistency: reprojection error (mean |ΔRGB| in [0,1]) of view A into views at yaw ±"
                    f"{r.protocol['yaw_offset']} rad, {n} latents, cameras: {camera_mode}, deterministic rendering, "
                    f"const noise, depth tolerance {r.protocol['depth_tolerance']:.4g}")
        return MetricResult(name, camera_mode, r.mae, 0, r.num_pairs, protocol, details, time.perf_counter() - t0)

    if feature_extractor is None:
        raise ValueError(f"{name} needs a feature extractor (e.g. epigraf.metrics.InceptionFeatures())")
    res = _check_resolution(G, dataset, resolution)
    need_features = spec.kind == "kid"
    if real_stats is None or (need_features and real_stats.features is None):
        real_stats = real_statistics(dataset, feature_extractor, real_batch_size, need_features, cache_dir,
                                     progress)
    fakes = track(generate_images(G, dataset, n, camera_mode, batch_size, device, seed, res,
                                  deterministic=deterministic), n, f"{name} fakes ({camera_mode} cameras)",
                  enabled=progress)
    log.info("%s (%s cameras): extracting features of %d fakes", name, camera_mode, n)
    fake_moments, fake_features = extract_features(fakes, feature_extractor, keep_features=need_features)
    if spec.kind == "fid":
        value = real_stats.moments.fid(fake_moments)
    else:
        assert real_stats.features is not None and fake_features is not None
        value = kernel_inception_distance(real_stats.features, fake_features, spec.kid_subsets,
                                          spec.kid_subset_size, seed=seed)
    num_real = num_real_images(dataset)
    details = {"seed": seed, "resolution": res, "deterministic": deterministic,
               "detector": feature_extractor.identity, "real_cache_hit": real_stats.cache_hit,
               "feature_dim": int(np.asarray(real_stats.moments.mean).shape[0])}
    protocol = _protocol(spec, camera_mode, num_real, n, res, deterministic, feature_extractor.identity)
    return MetricResult(name, camera_mode, value, num_real, n, protocol, details, time.perf_counter() - t0)
