"""Evaluation: FID/KID with Inception-v3 features, the 3D-consistency metric (docs/method.md §7.1), and geometry
against the built-in dataset's true shapes.

    from epigraf import load_checkpoint
    from epigraf.data import ImageDataset
    from epigraf.metrics import InceptionFeatures, compute_metric, consistency_metric

    G = load_checkpoint("run/network.safetensors").G_ema
    data = ImageDataset("data/ffhq512.zip")
    fid = compute_metric(G, data, "fid50k_full", "dataset", InceptionFeatures(), device="cuda")
    print(fid.value, fid.protocol)
    print(consistency_metric(G, data, "dataset", num_latents=64).mae)
    print(geometry_metric(G, "~/.cache/epigraf/builtin-v1-toys-64").details["mean"])   # a built-in model

Module map: ``inception`` (the detector and where its weights come from), ``fid`` (FID, KID, statistics,
real-statistics cache), ``sampling`` (cameras and labels of fakes), ``evaluate`` (the named protocols),
``consistency`` (reprojection between views), ``geometry`` (depth, silhouettes and meshes against the truth),
``builtin_truth`` (that truth: views, depth, coverage and meshes of a built-in dataset), ``shapes`` (meshes →
inside/outside, surface samples, density fields).
"""

from epigraf.metrics.consistency import (
    ConsistencyResult,
    ReprojectionStats,
    View,
    consistency_metric,
    project_points,
    reproject,
)
from epigraf.metrics.evaluate import METRICS, MetricResult, compute_metric, generate_images
from epigraf.metrics.fid import (
    FeatureMoments,
    RealStatistics,
    default_cache_dir,
    frechet_distance,
    kernel_inception_distance,
    real_statistics,
)
from epigraf.metrics.geometry import GeometryProtocol, geometry_metric
from epigraf.metrics.inception import (
    ENV_VAR,
    FeatureExtractor,
    InceptionFeatures,
    TorchScriptFeatures,
    find_inception_weights,
)
from epigraf.metrics.sampling import CAMERA_MODES

__all__ = [
    "CAMERA_MODES",
    "ENV_VAR",
    "METRICS",
    "ConsistencyResult",
    "FeatureExtractor",
    "FeatureMoments",
    "GeometryProtocol",
    "InceptionFeatures",
    "MetricResult",
    "RealStatistics",
    "ReprojectionStats",
    "TorchScriptFeatures",
    "View",
    "compute_metric",
    "consistency_metric",
    "default_cache_dir",
    "find_inception_weights",
    "frechet_distance",
    "generate_images",
    "geometry_metric",
    "kernel_inception_distance",
    "project_points",
    "real_statistics",
    "reproject",
]
