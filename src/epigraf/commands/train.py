"""``epigraf train``: patch-wise EpiGRAF training (single process, or under ``torchrun`` for many)."""

from __future__ import annotations

import argparse
import logging

from epigraf.train.options import TrainOptions, add_options_arguments, options_from_args

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a generator (default: the built-in dataset)",
        description="Train EpiGRAF. Without --data, trains the 'builtin' preset on the built-in dataset. "
                    "Multi-GPU / multi-node: torchrun --nproc-per-node N -m epigraf.cli train ...",
    )
    add_options_arguments(p, TrainOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from epigraf.train.loop import train

    opts = options_from_args(args, TrainOptions)
    result = train(opts)
    kimg, total_kimg = result.cur_nimg / 1000, opts.with_preset_defaults().kimg
    if kimg < total_kimg:
        log.info("stopped at %g of %g kimg; continue with the same command and --resume latest (run folder %s)",
                 kimg, total_kimg, result.run_dir)
    else:
        log.info("finished %g kimg; networks and snapshots are in %s", kimg, result.run_dir)
    return 0
