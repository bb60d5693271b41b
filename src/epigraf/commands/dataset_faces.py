"""``epigraf dataset faces``: photos → FFHQ-aligned crops with estimated camera poses (``epigraf.faces``).

``register_faces`` adds the sub-command to the sub-parsers of ``epigraf dataset``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from epigraf.faces import DetectorConfig, FaceDetector, build_face_dataset
from epigraf.faces.report import pose_histograms, pose_summary, skipped_text

# Skipped photos listed on the terminal; the report folder's skipped.txt lists them all.
_SHOWN_SKIPS = 10


def register_faces(dataset_subparsers: argparse._SubParsersAction,
                   check: argparse.ArgumentParser) -> None:
    """Add ``faces`` to the sub-commands of ``epigraf dataset``; ``check`` is the ``dataset check`` parser whose
    report follows the build."""
    p = dataset_subparsers.add_parser(
        "faces", help="photos → FFHQ-aligned face crops with estimated camera poses (dataset.json)",
        description="Detect the largest face of every photo (MTCNN, weights from the facenet-pytorch wheel: "
                    "pip install --no-deps facenet-pytorch), crop it the way FFHQ was made, estimate the camera "
                    "pose from five landmarks, and write a zip that `epigraf train --data` reads. Then runs "
                    "`epigraf dataset check` on it. The report folder gets poses.png (yaw and pitch histograms), "
                    "skipped.txt (photos left out, with reasons) and faces.json (every detection and pose).")
    p.add_argument("source", type=Path, help="folder or zip of photos")
    p.add_argument("out", type=Path, help="output .zip")
    p.add_argument("--resolution", type=int, default=256, help="side of the aligned crops in pixels")
    p.add_argument("--report", type=Path, default=None,
                   help="folder for poses.png, skipped.txt and faces.json (default: OUT without .zip + _report)")
    p.add_argument("--min-face", type=float, default=DetectorConfig.min_face,
                   help="smallest face searched, pixels (larger is faster)")
    p.add_argument("--force", action="store_true", help="replace an existing output zip (never the source)")
    p.set_defaults(func=lambda args: run_faces(args, check))


def run_faces(args: argparse.Namespace, check: argparse.ArgumentParser) -> int:
    detector = FaceDetector(DetectorConfig(min_face=args.min_face))
    result = build_face_dataset(args.source, args.out, args.resolution, detector, overwrite=args.force,
                                progress=sys.stderr.isatty())
    report = args.report or args.out.with_name(args.out.name.removesuffix(".zip") + "_report")
    report.mkdir(parents=True, exist_ok=True)
    pose_histograms(result.angles, f"estimated poses of {args.source.name}").save(report / "poses.png")
    (report / "skipped.txt").write_text(skipped_text(result.skipped))
    (report / "faces.json").write_text(json.dumps([asdict(r) for r in result.records], indent=1))
    print(f"wrote {result.path}: {len(result.records)} faces at {result.resolution}×{result.resolution}, "
          f"{len(result.skipped)} photos skipped")
    for name, reason in result.skipped[:_SHOWN_SKIPS]:
        print(f"  skipped {name}: {reason}")
    if len(result.skipped) > _SHOWN_SKIPS:
        print(f"  … {len(result.skipped) - _SHOWN_SKIPS} more in {report / 'skipped.txt'}")
    print(f"  poses: {pose_summary(result.angles)}")
    print(f"  report: {report / 'poses.png'}, {report / 'skipped.txt'}, {report / 'faces.json'}")
    print(f"\n$ epigraf dataset check {args.out}")
    checked = check.parse_args([str(args.out)])
    return checked.func(checked)
