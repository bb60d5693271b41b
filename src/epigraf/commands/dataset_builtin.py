"""``epigraf dataset builtin``: render the built-in dataset (``epigraf.data.builtin``) into the cache or a folder.

``register_builtin`` adds the sub-command to the sub-parsers of ``epigraf dataset``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from epigraf.data import builtin


def register_builtin(dataset_subparsers: argparse._SubParsersAction) -> None:
    """Add ``builtin`` to the sub-commands of ``epigraf dataset``."""
    p = dataset_subparsers.add_parser(
        "builtin", help="render the built-in dataset (pybullet's meshes, Megascans-like cameras)",
        description="Render meshes bundled with pybullet from cameras uniform on the sphere (white background), "
                    "with depth and masks, into a dataset folder that `epigraf train` reads: the twelve 'toys' "
                    "(a duck, a mug, a soccer ball, ...; each toy a class; what `epigraf train` learns by default) "
                    "or 'all' 1,049 objects (a thousand random shapes among them; unlabelled). "
                    "A complete build is reused unless --force is given. Needs pybullet: "
                    "pip install 'epigraf[builtin]'.")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: $EPIGRAF_CACHE or ~/.cache/epigraf, "
                        "builtin-<version>-<subset>-<resolution>)")
    p.add_argument("--subset", choices=sorted(builtin.SUBSETS), default=builtin.DEFAULT_SUBSET,
                   help=f"which objects (default: {builtin.DEFAULT_SUBSET})")
    p.add_argument("--resolution", type=int, default=builtin.DEFAULT_RESOLUTION, help="image side in pixels")
    p.add_argument("--objects", type=int, default=None,
                   help="render only the first N objects of the subset (default: all)")
    p.add_argument("--views", type=int, default=None,
                   help="views per object (default: the subset's, "
                        + ", ".join(f"{n} for {s}" for s, n in builtin.DEFAULT_VIEWS.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="seed of the camera poses")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: the usable CPUs)")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    p.set_defaults(func=run_builtin)


def run_builtin(args: argparse.Namespace) -> int:
    try:
        root = builtin.build_builtin_dataset(
            args.out, resolution=args.resolution, subset=args.subset, num_objects=args.objects,
            views_per_object=args.views, seed=args.seed, workers=args.workers, force=args.force, progress=True)
    except ImportError as err:
        print(f"epigraf dataset builtin: error: {err}", file=sys.stderr)
        return 2
    manifest = builtin.read_manifest(root)
    objects = manifest["objects"]
    print(f"{root}: {manifest['num_images']} images of {len(objects)} objects "
          f"({sum(o['textured'] for o in objects)} textured), {args.resolution}², "
          f"content sha256 {manifest['content_sha256'][:16]}…")
    return 0
