"""FFHQ-style alignment: an oriented square crop defined by the eyes and the mouth (Karras et al. 2019).

The rule (docs/cameras.md, "Faces"), with e = eye midpoint, m = mouth-corner midpoint, in photo pixels (y down):

    eye_to_eye   = right eye − left eye           (as seen in the image)
    eye_to_mouth = m − e
    x  = eye_to_eye + rot(eye_to_mouth)           rot(a, b) = (b, −a): the downward eye-to-mouth vector
                                                  turned a quarter to point right, like eye_to_eye
    x ← x / |x| · max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)     half the side, along the crop's width
    y  = (−x_y, x_x)                              half the side, along the crop's height (x turned 90°)
    centre = e + 0.1 · eye_to_mouth

The crop is the square centre ± x ± y; its side 2|x| is about four eye distances. Parts of it outside the photo
are filled by mirroring the photo at its border (FFHQ also blurs that padding; we do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# The crop is resampled at this multiple of the output side, then shrunk with a Lanczos filter (antialiasing).
_SUPERSAMPLE = 2


@dataclass
class Alignment:
    """The oriented square crop: centre [2], half-side vectors x_axis [2] (towards the crop's right) and
    y_axis [2] (towards its bottom), in photo pixels."""

    center: np.ndarray
    x_axis: np.ndarray
    y_axis: np.ndarray

    @property
    def side(self) -> float:
        """The crop's side in photo pixels."""
        return 2 * float(np.hypot(*self.x_axis))

    def to_crop(self, points: np.ndarray, resolution: int) -> np.ndarray:
        """Photo pixels [N, 2] → pixels of the resolution × resolution crop [N, 2]."""
        d = np.asarray(points, dtype=np.float64) - self.center
        norm2 = float(self.x_axis @ self.x_axis)
        u, v = d @ self.x_axis / norm2, d @ self.y_axis / norm2
        return np.stack([u + 1, v + 1], axis=-1) * (resolution / 2)

    def to_photo(self, points: np.ndarray, resolution: int) -> np.ndarray:
        """Crop pixels [N, 2] → photo pixels [N, 2] (the inverse of ``to_crop``)."""
        uv = np.asarray(points, dtype=np.float64) * (2 / resolution) - 1
        return self.center + uv[..., :1] * self.x_axis + uv[..., 1:] * self.y_axis


def ffhq_alignment(landmarks: np.ndarray) -> Alignment:
    """Five landmarks [5, 2] (left eye, right eye, nose, left and right mouth corner, as seen in the image) →
    the FFHQ crop (the nose is not used)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye = (lm[0] + lm[1]) / 2
    eye_to_eye = lm[1] - lm[0]
    eye_to_mouth = (lm[3] + lm[4]) / 2 - eye
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x *= max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth)) / np.hypot(*x)
    return Alignment(center=eye + 0.1 * eye_to_mouth, x_axis=x, y_axis=np.array([-x[1], x[0]]))


def outside_fraction(alignment: Alignment, width: int, height: int, samples: int = 32) -> float:
    """The share of the crop's area that lies outside a width × height photo (filled by mirroring)."""
    grid = (np.arange(samples) + 0.5) * (2 / samples) - 1
    u, v = np.meshgrid(grid, grid)
    p = alignment.center + u[..., None] * alignment.x_axis + v[..., None] * alignment.y_axis
    inside = (p[..., 0] >= 0) & (p[..., 0] <= width) & (p[..., 1] >= 0) & (p[..., 1] <= height)
    return float(1 - inside.mean())


def crop_aligned(photo: np.ndarray, alignment: Alignment, resolution: int) -> np.ndarray:
    """photo uint8 [H, W, 3] → the aligned crop, uint8 [resolution, resolution, 3].

    A photo much larger than the crop's pixels is first shrunk by an integer factor (box filter); the parts of
    the crop outside the photo are mirrored in; the oriented square is resampled (bicubic) at twice the
    output side and shrunk to it (Lanczos).
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = Image.fromarray(np.ascontiguousarray(photo))
    work = _SUPERSAMPLE * resolution
    shrink = max(1, int(alignment.side / work))
    if shrink > 1:
        image = image.reduce(shrink)
    center, x_axis, y_axis = alignment.center / shrink, alignment.x_axis / shrink, alignment.y_axis / shrink
    corners = center + np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)]) @ np.stack([x_axis, y_axis])
    pad_lo = np.maximum(0, np.ceil(-corners.min(axis=0)) + 2).astype(int)
    pad_hi = np.maximum(0, np.ceil(corners.max(axis=0) - image.size) + 2).astype(int)
    if (pad_lo > 0).any() or (pad_hi > 0).any():
        padded = np.pad(np.asarray(image), ((pad_lo[1], pad_hi[1]), (pad_lo[0], pad_hi[0]), (0, 0)), mode="reflect")
        image, center = Image.fromarray(padded), center + pad_lo
    # PIL's affine map takes output pixel coordinates to input ones: p = centre + (2u/work − 1) x + (2v/work − 1) y.
    origin = center - x_axis - y_axis
    coeffs = (2 * x_axis[0] / work, 2 * y_axis[0] / work, origin[0], 2 * x_axis[1] / work, 2 * y_axis[1] / work,
              origin[1])
    out = image.transform((work, work), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)
    return np.asarray(out.resize((resolution, resolution), Image.Resampling.LANCZOS))

