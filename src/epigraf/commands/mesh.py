"""``epigraf mesh``: each seed's raw density on a grid → MRC volume and/or coloured PLY / OBJ / GLB meshes."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from epigraf.commands.arguments import add_force_argument, refuse_to_overwrite
from epigraf.commands.model_arguments import add_latent_arguments, add_model_arguments, prepare
from epigraf.export.mesh import MESH_FORMATS, save_mesh
from epigraf.export.mrc import write_mrc
from epigraf.geometry import extract_geometry
from epigraf.isosurface import BACKENDS, skimage_available
from epigraf.seeds import parse_seeds

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("mesh", help="extract density volumes and meshes of generated scenes")
    add_model_arguments(p)
    add_latent_arguments(p)
    p.add_argument("--resolution", type=int, default=256, help="grid points per side")
    p.add_argument("--cube-size", type=float, default=None,
                   help="side of the cube centred at the origin, world units (default: the tri-plane cube, "
                        "2·cube_scale; the original's default is 0.3)")
    p.add_argument("--level", type=float, default=None,
                   help="iso-level on the raw density (default: automatic, where grid rays become half opaque; "
                        "the original uses 25)")
    p.add_argument("--formats", nargs="+", choices=("mrc", *MESH_FORMATS), default=["ply"],
                   help="files per seed: mrc (the density volume) and/or ply, obj, glb meshes")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto = marching cubes from scikit-image when installed, else built-in marching tetrahedra")
    p.add_argument("--out", type=Path, default=Path("meshes"), help="output folder")
    add_force_argument(p)
    p.set_defaults(func=run)


def _output(args: argparse.Namespace, seed: int, fmt: str) -> Path:
    return args.out / f"seed{seed:04d}.{fmt}"


def run(args: argparse.Namespace) -> int:
    if args.resolution < 2:
        raise ValueError(f"--resolution must be ≥ 2, got {args.resolution}")
    if args.cube_size is not None and args.cube_size <= 0:
        raise ValueError(f"--cube-size must be positive, got {args.cube_size}")
    if args.backend == "skimage" and not skimage_available():
        raise ValueError("--backend skimage needs the optional mesh extra: pip install 'epigraf[mesh]' (scikit-image)")
    if args.backend == "auto" and not skimage_available():
        log.info("scikit-image is not installed: using the built-in marching tetrahedra "
                 "(pip install 'epigraf[mesh]' for marching cubes)")
    refuse_to_overwrite([_output(args, seed, fmt) for seed in parse_seeds(args.seeds) for fmt in args.formats],
                        args.force)
    G, seeds, ws = prepare(args)
    for i, seed in enumerate(seeds):
        geo = extract_geometry(G, ws[i:i + 1], args.resolution, args.cube_size, args.level, args.backend)
        log.info("seed %d: level %.4g (%s), %d vertices, %d faces", seed, geo.level,
                 "given" if args.level is not None else "automatic", len(geo.mesh.vertices), len(geo.mesh.faces))
        for fmt in args.formats:
            path = _output(args, seed, fmt)
            if fmt == "mrc":
                write_mrc(geo.volume, path, geo.spacing, geo.origin)
            else:
                save_mesh(geo.mesh, path)
            log.info("wrote %s", path)
    return 0
