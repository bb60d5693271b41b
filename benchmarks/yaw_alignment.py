"""How much of a built-in model's geometry error is a turn of its toys about the world's up axis (issue 25).

    python benchmarks/yaw_alignment.py NETWORK [--steps 24] [--data DIR] [--classes 0,11] [--out JSON]

The geometry metric (``epigraf.metrics.geometry``) renders G at the dataset's own cameras. When D is not told the
camera and the cameras are uniform in yaw (the built-in data's), a toy turned about the up axis makes exactly the
same images as the upright one, each from another camera: nothing in the GAN objective fixes that turn, and the
metric counts it as error. For each class this renders the protocol's views with every camera's yaw offset by
k · 360° / steps (``geometry.yaw_alignment``) and reports the silhouette IoU and median depth error at the
dataset's cameras (offset 0) beside the best offset's. A large gap says the shape is better than its pose; no gap
says the pose is fixed. Prints a table, writes JSON (default ``benchmarks/results/yaw_<network stem>.json``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from machine import device_name, write_result

from epigraf.checkpoint import load_checkpoint
from epigraf.data.builtin import default_dir
from epigraf.metrics.builtin_truth import load_builtin_truth
from epigraf.metrics.geometry import GeneratorModel, GeometryProtocol, check_model_fits, yaw_alignment
from epigraf.process_settings import flush_denormals

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", type=Path, help="a network checkpoint of a built-in run (G_ema is measured)")
    parser.add_argument("--steps", type=int, default=24, help="yaw offsets tried, evenly over 360°")
    parser.add_argument("--data", type=Path, help="the built-in dataset folder (default: the cached 64² toys)")
    parser.add_argument("--classes", help="comma-separated labels (default: every class)")
    parser.add_argument("--out", type=Path, help="JSON path")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be ≥ 1, got {args.steps}")
    flush_denormals()
    protocol = GeometryProtocol()
    classes = [int(k) for k in args.classes.split(",")] if args.classes else None
    G = load_checkpoint(args.network, "cpu").G_ema.eval()
    truths = load_builtin_truth(args.data or default_dir(), protocol.views_per_class, classes)
    check_model_fits(G, truths)
    model = GeneratorModel(G, protocol.truncation_psi)
    yaws = [2 * math.pi * k / args.steps for k in range(args.steps)]
    t0 = time.perf_counter()
    rows = []
    print(f"{'class':14s} {'IoU at 0':>9s} {'depth at 0':>10s} {'best yaw':>8s} {'IoU':>6s} {'depth':>6s}")
    for truth in truths:
        scores = yaw_alignment(model, truth, yaws, protocol)
        best = max(range(len(yaws)), key=lambda k: scores[k]["silhouette_iou"])
        row = {"class": truth.name, "label": truth.label, "at_zero": scores[0],
               "best_yaw_degrees": math.degrees(yaws[best]), "at_best": scores[best],
               "silhouette_iou_by_yaw": [s["silhouette_iou"] for s in scores]}
        rows.append(row)
        print(f"{truth.name:14s} {scores[0]['silhouette_iou']:9.3f} {scores[0]['depth_error']:10.3f} "
              f"{row['best_yaw_degrees']:8.0f} {scores[best]['silhouette_iou']:6.3f} "
              f"{scores[best]['depth_error']:6.3f}", flush=True)

    def mean(key: str, where: str) -> float:
        return sum(r[where][key] for r in rows) / len(rows)

    print(f"{'mean':14s} {mean('silhouette_iou', 'at_zero'):9.3f} {mean('depth_error', 'at_zero'):10.3f} "
          f"{'':8s} {mean('silhouette_iou', 'at_best'):6.3f} {mean('depth_error', 'at_best'):6.3f}")
    out = args.out or RESULTS / f"yaw_{args.network.stem}.json"
    result = {"network": str(args.network), "steps": args.steps, "device": device_name(torch.device("cpu")),
              "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0,
              "protocol": protocol.describe(), "classes": rows}
    write_result(out, result)


if __name__ == "__main__":
    main()
