"""Settings of an inversion, one typed dataclass; the CLI flags of ``epigraf invert`` map onto it."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

SPACES = ("w", "wplus")


@dataclass
class InversionConfig:
    """How to fit a latent (and camera) to one photo, and optionally tune the generator around it.

    space: "w" optimises one w shared by every layer (stays on the model's 3D-consistent manifold); "wplus"
    one w per layer (closer fits, more risk of a 2D-only fit). Losses: mse_weight·MSE + ssim_weight·(1 − SSIM)
    + perceptual_weight·Inception distance + noise_weight·noise autocorrelation. Learning rates follow a short
    linear warm-up and a cosine ramp-down; w is jittered by w_noise·σ_w, fading to zero at 75 % of the steps
    (StyleGAN2's projector schedule), which helps it out of poor basins early.
    """

    steps: int = 300
    lr: float = 0.05
    space: str = "w"
    seed: int = 0
    class_index: int | None = None
    resolution: int | None = None  # render side while optimising; default the model's image resolution
    mse_weight: float = 1.0
    ssim_weight: float = 0.5
    perceptual_weight: float = 0.5
    optimize_noise: bool = True
    noise_weight: float = 1e4
    w_noise: float = 0.05
    mean_samples: int = 1000
    camera_lr: float = 0.01
    # Multi-start search (camera_search.py), because the loss has many poor local minima: every pair of a view
    # (without a given camera: a yaw × pitch grid over ±search_span standard deviations of the model's camera
    # distribution) and a starting latent (the mean, then search_latents − 1 mapped samples) is fitted for
    # search_steps at search_resolution, camera fixed; the refine_candidates best pairs are then refined
    # (latent, and camera when estimated) for refine_steps at the full resolution, and the pair with the
    # lowest loss after that is the start of the final fit of `steps`. An estimated camera gets a second
    # multi-start at it (the latent starting afresh from every start), then the final fit.
    search_yaws: int = 7
    search_pitches: int = 3
    search_span: float = 2.0
    search_latents: int = 4
    search_steps: int = 20
    search_resolution: int = 32
    search_batch: int = 7  # candidates fitted together; bounds memory (each holds its own render graph)
    refine_candidates: int = 4
    refine_steps: int = 50
    # Pivotal tuning (PTI): fine-tune G around the found latent; locality keeps G's other samples unchanged.
    pti_steps: int = 0
    pti_lr: float = 3e-4
    locality_weight: float = 1.0
    locality_mix: float = 0.5

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"--space must be one of {list(SPACES)}, got {self.space!r}")
        for name in ("steps", "search_yaws", "search_pitches", "search_latents", "search_steps", "mean_samples",
                     "search_resolution", "search_batch", "refine_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        for name in ("refine_steps", "pti_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 0, got {getattr(self, name)}")
        if self.resolution is not None and self.resolution < 2:
            raise ValueError(f"--resolution must be ≥ 2, got {self.resolution}")
        floats = [f.name for f in fields(self) if f.type == "float"]
        for name in floats:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number ≥ 0, got {value}")
        for name in ("lr", "pti_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 < self.locality_mix <= 1:
            raise ValueError(f"--locality-mix must be in (0, 1], got {self.locality_mix}")
