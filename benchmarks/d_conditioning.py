"""How much a trained D's verdict on real images depends on its conditioning: the class and the camera (issue 25).

    python benchmarks/d_conditioning.py NETWORK [--data DIR] [--images 512] [--seed 0] [--out JSON]

A class- and camera-conditioned D can only push G towards each toy's true shape at each camera if its logit for
a real image drops when it is told the wrong class or the wrong camera. For a sample of the dataset's images,
each seen whole (patch scale 1, as after no crop), this compares D's logit with the image's own label and camera
against (a) the same label and the camera of another view of the same class (the pose the image does not show),
and (b) the next class's label with the image's camera. It reports the mean logit of each and the mean drops;
drops near 0 beside a large real/fake gap (``stats.jsonl``) say D hardly uses that conditioning. No augmentation
and no blur: the D of the snapshot as it is at the end of training. Prints a table, writes JSON (default
``benchmarks/results/dcond_<run>_<network stem>.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from machine import device_name, write_result

from epigraf.checkpoint import load_checkpoint
from epigraf.data.builtin import default_dir
from epigraf.data.dataset import ImageDataset
from epigraf.patches import PatchParams, extract_patches
from epigraf.process_settings import flush_denormals

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", type=Path, help="a network checkpoint of a built-in run (its D is measured)")
    parser.add_argument("--data", type=Path, help="the run's dataset (default: the cached built-in 64² toys)")
    parser.add_argument("--images", type=int, default=512, help="real images sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON path")
    args = parser.parse_args()
    flush_denormals()
    ckpt = load_checkpoint(args.network, "cpu")
    if ckpt.D is None:
        parser.error(f"{args.network} holds no D")
    D = ckpt.D.eval()
    if not (D.cfg.c_dim and D.cfg.camera_cond):
        parser.error("this D is not conditioned on both class and camera")
    data = ImageDataset(args.data or default_dir(), coverage=D.cfg.img_channels == 4)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(data), size=min(args.images, len(data)), replace=False)
    items = [data[int(i)] for i in picks]
    images = torch.from_numpy(np.stack([np.concatenate([it.image, it.coverage]) for it in items])).float()
    images = images / 127.5 - 1
    labels = torch.from_numpy(np.stack([it.label for it in items]))
    angles = torch.from_numpy(np.stack([it.angles for it in items]))
    classes = labels.argmax(1)
    # (a) another view of the same class: its camera, the image's label. Views are drawn from the whole dataset.
    all_classes = data.labels.argmax(1)
    other = [int(rng.choice(np.flatnonzero((all_classes == int(c)) & (np.arange(len(data)) != int(p)))))
             for c, p in zip(classes, picks, strict=True)]
    other_angles = torch.from_numpy(data.camera_angles[other]).float()
    # (b) the next class's label, the image's camera
    wrong_labels = torch.roll(labels, 1, dims=1)

    b = images.shape[0]
    full = PatchParams(torch.ones(b, 2), torch.zeros(b, 2))
    patches = extract_patches(images, full, D.input_resolution)
    with torch.no_grad():
        true = D(patches, labels, full, camera_angles=angles)
        wrong_camera = D(patches, labels, full, camera_angles=other_angles)
        wrong_class = D(patches, wrong_labels, full, camera_angles=angles)
    yaw_gap = (other_angles[:, 0] - angles[:, 0]).abs().remainder(2 * np.pi)
    yaw_gap = torch.minimum(yaw_gap, 2 * np.pi - yaw_gap)
    far = yaw_gap > np.pi / 2
    result = {
        "network": str(args.network), "device": device_name("cpu"), "images": b, "seed": args.seed,
        "logit_true": float(true.mean()),
        "logit_wrong_camera": float(wrong_camera.mean()),
        "logit_wrong_class": float(wrong_class.mean()),
        "drop_wrong_camera": float((true - wrong_camera).mean()),
        "drop_wrong_camera_far": float((true - wrong_camera)[far].mean()),
        "fraction_far": float(far.float().mean()),
        "drop_wrong_class": float((true - wrong_class).mean()),
        "fraction_true_above_wrong_camera": float((true > wrong_camera).float().mean()),
        "fraction_true_above_wrong_class": float((true > wrong_class).float().mean()),
    }
    print(f"D of {args.network}: {b} real images, whole (scale 1)")
    print("| conditioning | mean logit | mean drop from the true | true above it |")
    print("|---|---:|---:|---:|")
    print(f"| own class and camera | {result['logit_true']:+.3f} | – | – |")
    print(f"| another view's camera | {result['logit_wrong_camera']:+.3f} | {result['drop_wrong_camera']:+.3f} "
          f"(yaw > 90° off: {result['drop_wrong_camera_far']:+.3f}) | "
          f"{result['fraction_true_above_wrong_camera']:.2f} |")
    print(f"| the next class | {result['logit_wrong_class']:+.3f} | {result['drop_wrong_class']:+.3f} | "
          f"{result['fraction_true_above_wrong_class']:.2f} |")
    out = args.out or RESULTS / f"dcond_{args.network.parent.parent.name}_{args.network.stem}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
