"""Statistics of a dataset for ``epigraf dataset info``: counts, labels and pose statistics, as JSON-able
data and as text."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from epigraf.cameras.conventions import circular_mean
from epigraf.data.dataset import ImageDataset


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "std": float(values.std())}


def dataset_summary(ds: ImageDataset) -> dict[str, Any]:
    """Counts, resolution, labels (class histogram or vector size) and pose statistics (radians) of the
    image files (mirrored copies are not counted)."""
    n = ds.num_images
    out: dict[str, Any] = {"path": ds.path, "images": n, "resolution": ds.resolution, "c_dim": ds.c_dim,
                           "label_kind": ds.label_kind, "stored_camera": ds.camera}
    if ds.label_kind == "class":
        counts = np.bincount(ds.labels[:n].argmax(axis=1), minlength=ds.c_dim)
        out["label_histogram"] = {int(c): int(k) for c, k in enumerate(counts)}
    if ds.has_cameras:
        angles = ds.camera_angles[:n].astype(np.float64)
        mean, concentration = circular_mean(angles[:, 0])
        out["poses"] = {
            "yaw": {**_stats(angles[:, 0]), "circular_mean": mean, "concentration": concentration},
            "pitch": _stats(angles[:, 1]),
            "roll": _stats(angles[:, 2]),
        }
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of ``dataset_summary``; angles in degrees."""
    lines = [f"dataset {summary['path']}",
             f"  images: {summary['images']} at {summary['resolution']}×{summary['resolution']}"]
    kind = summary["label_kind"]
    if kind is None:
        lines.append("  labels: none")
    elif kind == "vector":
        lines.append(f"  labels: {summary['c_dim']}-dim vectors")
    else:
        hist = summary["label_histogram"]
        lines.append(f"  labels: {len(hist)} classes")
        lines.extend(f"    class {c:>4}: {k:>7} {'#' * max(1, round(40 * k / max(hist.values()))) if k else ''}"
                     for c, k in hist.items())
    camera = summary["stored_camera"]
    if camera:
        lines.append("  stored camera: " + ", ".join(f"{k} {v:.4g}" for k, v in camera.items()))
    poses = summary.get("poses")
    if poses is None:
        lines.append("  cameras: none")
    else:
        columns = ("min", "max", "mean", "std")
        lines.append("  poses (degrees): " + " ".join(f"{c:>8}" for c in columns))
        for name in ("yaw", "pitch", "roll"):
            lines.append(f"    {name:<14}" + " ".join(f"{math.degrees(poses[name][c]):8.2f}" for c in columns))
        yaw = poses["yaw"]
        lines.append(f"    yaw circular mean {math.degrees(yaw['circular_mean']):.2f}°, concentration "
                     f"{yaw['concentration']:.3f} (1 = one direction, 0 = all around)")
    return "\n".join(lines)
