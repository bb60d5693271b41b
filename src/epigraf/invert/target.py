"""The photo to invert: file → float [1, 3, R, R] in [−1, 1] at the model's resolution, with clear errors.

The model only knows images framed like its training data (for faces: FFHQ-style aligned crops, the face
centred and filling the same part of the frame). We do not align; we check the shape, convert the colour
mode, and — when asked with ``fit`` — centre-crop a non-square photo and resize it, with a warning that
framing matters.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

FITS = ("none", "center-crop", "resize")
# Below this side a photo holds too little to pin down a 3D latent (and SSIM's window no longer fits).
MIN_SIDE = 16


def to_rgb(image: Image.Image, name: str, white_background: bool = False) -> Image.Image:
    """RGB as is; grayscale, palette and RGBA/LA converted, saying so. Transparency is composited on the
    model's background colour: black, or white for a ``white_back`` model."""
    if image.mode == "RGB":
        return image
    transparent = "A" in image.getbands() or "transparency" in image.info
    log.warning("%s is %s, not RGB: converted to RGB%s", name, image.mode,
                f" (transparent pixels become {'white' if white_background else 'black'})" if transparent else "")
    if transparent:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if white_background else (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, resolution: int, fit: str, name: str) -> Image.Image:
    """Bring ``image`` to resolution × resolution.

    ``fit`` = "none": a non-square image is an error and a square one is resized (Lanczos).
    "center-crop": the largest centred square, then resized. "resize": squashed to a square (aspect ratio
    lost). Either of the last two warns that the model expects its training framing.
    """
    if fit not in FITS:
        raise ValueError(f"unknown --fit {fit!r}; choose from {list(FITS)}")
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise ValueError(f"{name} is {w}×{h}: too small to invert (at least {MIN_SIDE}×{MIN_SIDE} pixels)")
    if w != h:
        if fit == "none":
            raise ValueError(f"{name} is {w}×{h}, not square: crop it like the training images, or pass "
                             "--fit center-crop (or --fit resize)")
        if fit == "center-crop":
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side))
        log.warning("%s: %s to a square; the model expects photos framed like its training data "
                    "(faces: FFHQ-style aligned crops), so a different framing inverts poorly", name,
                    "centre-cropped" if fit == "center-crop" else "resized")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


def load_target(path: str | os.PathLike, resolution: int, fit: str = "none",
                white_background: bool = False) -> Tensor:
    """An image file → float [1, 3, resolution, resolution] in [−1, 1] (see ``to_rgb`` for transparency)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except OSError as err:
        raise ValueError(f"{path} is not a readable image: {err}") from err
    image = fit_square(to_rgb(image, path.name, white_background), resolution, fit, path.name)
    return pil_to_tensor(image)


def pil_to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image → float [1, 3, H, W] in [−1, 1] (v / 127.5 − 1)."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return (x / 127.5 - 1).permute(2, 0, 1)[None]
