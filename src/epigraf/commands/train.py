"""``epigraf train``: patch-wise EpiGRAF training (single process, or under ``torchrun`` for many)."""

from __future__ import annotations

import argparse

from epigraf.train.options import TrainOptions, add_options_arguments, options_from_args


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

    result = train(options_from_args(args, TrainOptions))
    print(result.run_dir)
    return 0
