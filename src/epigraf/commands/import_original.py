"""``epigraf import``: the original EpiGRAF's checkpoints → an epigraf checkpoint, executing nothing from them.

    epigraf import network-snapshot-025000.pkl --out ffhq512.safetensors          # config read from the pickle
    epigraf import network-snapshot-025000.pkl --preset ffhq512 --out ffhq512.safetensors
    epigraf import weights.pt --config config.json --out tiny.safetensors      # plain state dict

A pickle referencing any global outside the snapshot format is refused with an error naming it (exit 2).
See ``epigraf.compat.importer`` for where the hyperparameters come from.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from epigraf.commands.arguments import add_force_argument, refuse_to_overwrite
from epigraf.compat.importer import import_original
from epigraf.config import PRESETS

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="convert an original EpiGRAF snapshot (.pkl) or state dict safely")
    p.add_argument("source", type=Path, help="network-snapshot-*.pkl, or a state-dict file (.safetensors/.pt/.pth) "
                                             "with the original key names")
    cfg = p.add_mutually_exclusive_group()
    cfg.add_argument("--config", type=Path, default=None,
                     help="the original's hyperparameters as flat JSON (default for pickles: read from the file)")
    cfg.add_argument("--preset", choices=PRESETS, default=None, help="use one of our presets' architecture")
    p.add_argument("--out", type=Path, default=None,
                   help="output checkpoint (default: <source stem>.safetensors beside the source)")
    add_force_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source: Path = args.source
    out: Path = args.out or source.with_suffix(".safetensors")
    if out.resolve() == source.resolve():
        raise ValueError(f"the output {out} would overwrite the source; pass another --out")
    refuse_to_overwrite([out], args.force)
    ckpt = import_original(source, out, config=args.config, preset=args.preset)
    nets = ", ".join(name for name in ("G_ema", "G", "D") if getattr(ckpt, name) is not None)
    params = sum(p.numel() for p in ckpt.G_ema.parameters())
    meta = ckpt.metadata
    print(f"read {source} ({meta.get('source_format')}; hyperparameters from {meta.get('config_source')})")
    print(f"wrote {out}: {nets}; G_ema {params:,} parameters, {ckpt.config.generator.image_resolution}² images")
    return 0
