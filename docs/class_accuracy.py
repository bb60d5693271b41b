"""Does each class of a class-conditional model look like its class? For ``docs/results.md``.

    python docs/class_accuracy.py NETWORK [NETWORK ...] [--data DIR] [--out docs/results/class_accuracy.json]

A nearest-centroid classifier on Inception-v3 pool features: the centroids are the mean (centred, unit-norm)
features of 32 real views per class, the test set 16 other real views per class. Each fake is G_ema rendered
with a test view's label and camera (ψ = 1, fixed latents, deterministic rays), so the fakes and the held-out
reals are scored on the same cameras; the held-out reals' accuracy is the ceiling. Chance is 1 / classes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from epigraf.checkpoint import load_checkpoint
from epigraf.data.builtin import default_dir, read_manifest
from epigraf.data.dataset import ImageDataset
from epigraf.export.images import to_uint8
from epigraf.metrics import InceptionFeatures
from epigraf.process_settings import flush_denormals

CENTROID_VIEWS, TEST_VIEWS, BATCH = 32, 16, 16


def split(classes: np.ndarray, c_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the centroid views and the test views, per class in turn (RandomState(0))."""
    rng = np.random.RandomState(0)
    fit, test = [], []
    for k in range(c_dim):
        idx = rng.permutation(np.flatnonzero(classes == k))
        if len(idx) < CENTROID_VIEWS + TEST_VIEWS:
            raise SystemExit(f"class {k} has {len(idx)} images; need {CENTROID_VIEWS + TEST_VIEWS}")
        fit.append(idx[:CENTROID_VIEWS])
        test.append(idx[CENTROID_VIEWS:CENTROID_VIEWS + TEST_VIEWS])
    return np.concatenate(fit), np.concatenate(test)


def features(detector: InceptionFeatures, images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 3, H, W] → [N, 2048]."""
    x = torch.from_numpy(images)
    return torch.cat([detector(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


@torch.no_grad()
def render(G, dataset: ImageDataset, idx: np.ndarray) -> np.ndarray:
    """G_ema at the labels and cameras of ``idx`` → uint8 [N, 3, R, R]."""
    z = torch.from_numpy(np.random.RandomState(1).randn(len(idx), G.z_dim)).float()
    c = torch.from_numpy(dataset.labels[idx])
    angles = torch.from_numpy(dataset.camera_angles[idx])
    out = [to_uint8(G(z[i:i + BATCH], c[i:i + BATCH], angles[i:i + BATCH], truncation_psi=1.0,
                      deterministic=True).image) for i in range(0, len(idx), BATCH)]
    return np.concatenate(out).transpose(0, 3, 1, 2).copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("networks", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, help="the training images (default: the built-in dataset)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/class_accuracy.json"))
    args = parser.parse_args()
    flush_denormals()
    data = args.data or default_dir()
    dataset = ImageDataset(data, mirror=False)
    if dataset.label_kind != "class":
        raise SystemExit(f"{data} has no class labels")
    classes, c_dim = dataset.labels.argmax(1), dataset.c_dim
    names = (read_manifest(data) or {}).get("classes") or [f"class {k}" for k in range(c_dim)]
    fit, test = split(classes, c_dim)
    detector = InceptionFeatures()
    real_fit = features(detector, np.stack([dataset[int(i)].image for i in fit]))
    centre = real_fit.mean(0)

    def unit(f: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(f - centre, dim=1)

    centroids = torch.stack([unit(real_fit)[classes[fit] == k].mean(0) for k in range(c_dim)])
    truth = classes[test]

    def accuracy(f: torch.Tensor) -> tuple[float, list[float]]:
        hit = (unit(f) @ centroids.T).argmax(1).numpy() == truth
        return float(hit.mean()), [float(hit[truth == k].mean()) for k in range(c_dim)]

    real_acc, real_per = accuracy(features(detector, np.stack([dataset[int(i)].image for i in test])))
    result = {"data": str(data), "classes": names, "chance": 1 / c_dim, "test_views_per_class": TEST_VIEWS,
              "reals": {"accuracy": real_acc, "per_class": real_per}, "networks": {}}
    print(f"held-out reals: {real_acc:.3f} (chance {1 / c_dim:.3f})")
    for network in args.networks:
        G = load_checkpoint(network).G_ema.eval()
        acc, per = accuracy(features(detector, render(G, dataset, test)))
        result["networks"][network.name] = {"accuracy": acc, "per_class": per}
        print(f"{network.name}: {acc:.3f}  " + " ".join(f"{n} {p:.2f}" for n, p in zip(names, per, strict=True)),
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
