"""A fixed wall-clock training of the ``builtin`` preset on the built-in dataset, with KID before and after.

    python benchmarks/train_builtin.py --minutes 15 [--batch-size 16] [--resolution 64] [--data DIR]
                                       [--device auto] [--reals 2000] [--fakes 1000]
                                       [--no-kid | --kid-of NETWORK | --kid-curve RUN]
                                       [--out benchmarks/results/train_builtin.json]

Trains with ``epigraf train`` in a subprocess, stops it with SIGTERM after ``--minutes`` (the trainer writes
a snapshot and exits 0), reads img/s from ``stats.jsonl`` and computes KID (Inception-v3 features, dataset
cameras, ψ = 1) of a freshly initialised generator and of the final G_ema against a fixed random subset of
the built-in images. The subset and the fake counts are smaller than the kid50k_full protocol so the whole
measurement fits a CPU; the protocol string says so. Needs the Inception weights (see README, Metrics);
``--no-kid`` trains only and ``--kid-of NETWORK`` measures a run's checkpoint later, e.g. a GPU run on a CPU machine.
``--kid-curve RUN`` measures the initialisation and every snapshot of a run under one protocol (the same reals,
fakes and seeds at every point) and writes the curve to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import device_name

from epigraf.checkpoint import load_checkpoint
from epigraf.config import preset
from epigraf.data.builtin import build_builtin_dataset
from epigraf.data.dataset import ImageDataset
from epigraf.metrics import InceptionFeatures, compute_metric
from epigraf.metrics.fid import RealStatistics, real_statistics
from epigraf.nn.generator import Generator
from epigraf.train.run_snapshots import latest_snapshot


class SubsetDataset:
    """The first-class view of ``ImageDataset`` that the metrics need, restricted to fixed indices."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, indices
        self.resolution, self.has_cameras = dataset.resolution, dataset.has_cameras
        self.camera_angles = dataset.camera_angles[indices]
        self.labels = dataset.labels[indices]
        self.num_images = len(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]


def kid(G: Generator, reals: SubsetDataset, detector: InceptionFeatures, fakes: int, stats: RealStatistics):
    return compute_metric(G, reals, "kid50k_full", "dataset", detector, batch_size=8, num=fakes, seed=123,
                          cache_dir=False, real_stats=stats)


def train_for(minutes: float, run_dir: Path, extra: list[str]) -> float:
    """``epigraf train`` into ``run_dir`` for ``minutes``, then SIGTERM (snapshot, exit 0); the wall time."""
    cmd = [sys.executable, "-m", "epigraf.cli", "train", "--run", str(run_dir), "--kimg", "100000",
           "--snapshot-ticks", "1000", "--image-ticks", "20", "--no-progress", *extra]
    proc = subprocess.Popen(cmd)
    start = time.time()
    try:
        proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    if code != 0:
        raise SystemExit(f"training exited with {code}")
    return time.time() - start


def kid_at(networks: list[Path], dataset: ImageDataset, num_reals: int, fakes: int) -> tuple[list[float], str]:
    """KID of a freshly initialised generator (the run's seed-0 init), then of each network's G_ema, all against
    one fixed subset of ``num_reals`` real images; returns the values and the protocol."""
    reals = SubsetDataset(dataset, np.random.RandomState(0).choice(len(dataset), num_reals, replace=False))
    detector = InceptionFeatures()
    real_stats = real_statistics(reals, detector, keep_features=True, cache_dir=False)
    generators = (load_checkpoint(network).G_ema for network in networks)
    first = load_checkpoint(networks[0]).G_ema
    torch.manual_seed(0)
    initial = Generator(first.cfg).eval()
    initial.mapping.mean_camera_pose.copy_(first.mapping.mean_camera_pose)
    values, protocol = [], ""
    for G in (initial, *generators):
        result = kid(G, reals, detector, fakes, real_stats)
        values.append(result.value)
        protocol = result.protocol
        print(f"KID {len(values) - 1}/{len(networks)}: {result.value:.4f}", flush=True)
    return values, protocol


def measure_kid(network: Path, dataset: ImageDataset, num_reals: int, fakes: int) -> dict:
    """KID of a freshly initialised generator and of the network's G_ema."""
    (before, after), protocol = kid_at([network], dataset, num_reals, fakes)
    return {"kid_initial": before, "kid_final": after, "protocol": protocol}


def kid_curve(run_dir: Path, dataset: ImageDataset, num_reals: int, fakes: int) -> dict:
    """KID against kimg: the initialisation and every snapshot of ``run_dir``, one protocol throughout."""
    networks = sorted(run_dir.glob("network-*.safetensors"))
    if not networks:
        raise SystemExit(f"no network-*.safetensors snapshots in {run_dir}")
    values, protocol = kid_at(networks, dataset, num_reals, fakes)
    kimgs = [0.0] + [int(p.stem.split("-")[1]) / 1000 for p in networks]
    return {"run_dir": str(run_dir), "protocol": protocol, "kimg": kimgs, "kid": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=0, help="image resolution (0: the builtin preset's)")
    parser.add_argument("--data", type=Path, help="dataset folder (default: the built-in dataset at --resolution)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run", type=Path, help="run folder (default: a new temporary one)")
    parser.add_argument("--no-kid", action="store_true", help="train only (e.g. where no Inception weights are)")
    parser.add_argument("--kid-of", type=Path, help="skip training: KID of this network checkpoint (updates --out)")
    parser.add_argument("--kid-curve", type=Path, help="skip training: KID of every snapshot of this run folder")
    parser.add_argument("--reals", type=int, default=2000)
    parser.add_argument("--fakes", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_builtin.json"))
    args, passthrough = parser.parse_known_args()  # anything else goes to `epigraf train` (e.g. --workers 8)

    cfg = preset("builtin")
    resolution = args.resolution or cfg.generator.image_resolution
    data_dir = args.data or build_builtin_dataset(resolution=resolution)
    dataset = ImageDataset(data_dir)
    if args.kid_curve is not None:
        result = {"machine": device_name(args.device), **kid_curve(args.kid_curve, dataset, args.reals, args.fakes)}
    elif args.kid_of is not None:
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        result.update(measure_kid(args.kid_of, dataset, args.reals, args.fakes))
    else:
        run_dir = args.run or Path(tempfile.mkdtemp(prefix="epigraf-builtin-"))
        extra = ["--batch-size", str(args.batch_size), "--resolution", str(resolution), "--data", str(data_dir),
                 "--device", args.device, *passthrough]
        wall = train_for(args.minutes, run_dir, extra)
        stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
        steady = stats[1:] or stats
        result = {
            "machine": device_name(args.device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "resolution": resolution, "images": len(dataset), "wall_minutes": wall / 60,
            "batch_size": args.batch_size, "kimg": stats[-1]["kimg"], "ticks": len(stats),
            "img_per_sec": float(np.median([s["img_per_sec"] for s in steady])), "run_dir": str(run_dir),
        }
        if not args.no_kid:
            result.update(measure_kid(latest_snapshot(run_dir)[0], dataset, args.reals, args.fakes))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
