"""The radiance field: tri-plane lookup + a small shared MLP (SPEC §1.3–1.4).

A world point p is divided by ``cube_scale`` and projected onto three axis-aligned planes
P0 ← (x, y), P1 ← (x, z), P2 ← (y, z) (first coordinate = plane column); the bilinear samples
(align_corners=True, zero padding) are averaged and decoded by the MLP into (r, g, b, raw density).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from epigraf.nn.layers import FullyConnected

# Which point coordinates index (columns, rows) of planes P0, P1, P2.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))


def split_planes(planes: Tensor, channels: int) -> Tensor:
    """Decoder output [B, ≥3F, R, R] → planes [B, 3, F, R, R] (channels kF … (k+1)F − 1 form plane k).

    The result is stored feature-last (a [B, 3, R, R, F] buffer viewed as [B, 3, F, R, R]): bilinear
    sampling then reads each corner's F features from one cache line instead of F strided ones, which made
    CPU sampling ≈5× faster and its backward ≈1.3× faster, with identical values.
    """
    b, _, h, w = planes.shape
    feats = planes[:, : 3 * channels].reshape(b, 3, channels, h, w)
    return feats.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _sample_planes(planes: Tensor, points: Tensor, cube_scale: float) -> Tensor:
    """planes [B, 3, F, R, R], points [B, P, 3] → bilinear samples [B, 3, F, P]."""
    b, _, f, h, w = planes.shape
    coords = points / cube_scale
    grid = torch.stack([coords[..., list(axes)] for axes in PLANE_AXES], dim=1)  # [B, 3, P, 2]
    # grid_sampler_2d is F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True) minus the
    # dispatch to cuDNN's sampler, which rejects feature-last planes and grids of millions of points.
    sampled = torch.grid_sampler_2d(
        planes.reshape(b * 3, f, h, w), grid.reshape(b * 3, 1, -1, 2), 0, 0, True
    )  # [B*3, F, 1, P]
    return sampled.reshape(b, 3, f, -1)


def query_triplanes(planes: Tensor, points: Tensor, cube_scale: float) -> Tensor:
    """Bilinear tri-plane features per plane.

    planes [B, 3, F, R, R], points [B, P, 3] in world units → [B, 3, P, F].
    """
    return _sample_planes(planes, points, cube_scale).transpose(2, 3)


def mean_triplane_features(planes: Tensor, points: Tensor, cube_scale: float) -> Tensor:
    """The field's input: the mean of the three planes' features. planes [B, 3, F, R, R], points [B, P, 3] → [B, P, F].

    Averaging while the feature axis is still outer keeps the reduction over contiguous memory.
    """
    return _sample_planes(planes, points, cube_scale).mean(dim=1).transpose(1, 2)


class TriPlaneMLP(nn.Module):
    """Shared decoder of mean tri-plane features: ``num_layers`` equalised-lr FC layers, lrelu between.

    Outputs (r, g, b, raw density) with no output activation: colour is directly in the data range.
    """

    def __init__(self, in_features: int, hidden: int = 64, num_layers: int = 2, out_features: int = 4) -> None:
        super().__init__()
        dims = [in_features] + [hidden] * (num_layers - 1) + [out_features]
        self.model = nn.Sequential(*[
            FullyConnected(dims[i], dims[i + 1], activation=i < num_layers - 1) for i in range(num_layers)
        ])

    def forward(self, features: Tensor) -> Tensor:
        """features [..., F] → [..., 4]."""
        return self.model(features)


class TriPlaneField(nn.Module):
    """points → (rgb, raw σ) for a batch of tri-planes."""

    def __init__(self, channels: int, cube_scale: float, hidden: int = 64, num_layers: int = 2) -> None:
        super().__init__()
        self.channels, self.cube_scale = channels, cube_scale
        self.mlp = TriPlaneMLP(channels, hidden, num_layers)

    def forward(self, planes: Tensor, points: Tensor) -> Tensor:
        """planes [B, 3, F, R, R], points [B, P, 3] (world units) → [B, P, 4] = (r, g, b, raw density)."""
        return self.mlp(mean_triplane_features(planes, points, self.cube_scale))
