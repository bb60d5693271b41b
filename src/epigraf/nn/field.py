"""The radiance field: tri-plane lookup + a small shared MLP (docs/method.md §1.3–1.4).

A world point p is divided by ``cube_scale`` and projected onto three axis-aligned planes
P0 ← (x, y), P1 ← (x, z), P2 ← (y, z) (first coordinate = plane column); the bilinear samples
(align_corners=True, zero padding) are averaged and decoded by the MLP into (r, g, b, raw density).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epigraf.nn.layers import FullyConnected

# Which point coordinates index (columns, rows) of planes P0, P1, P2.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))


def split_planes(planes: Tensor, channels: int) -> Tensor:
    """Decoder output [B, ≥3F, R, R] → planes [B, 3, F, R, R] (channels kF … (k+1)F − 1 form plane k).

    The result is stored feature-last (a [B, 3, R, R, F] buffer viewed as [B, 3, F, R, R]): a corner's F
    features are one contiguous row, the table that the CPU path of :func:`mean_triplane_features` gathers
    from without a copy, and bilinear samplers read them from one cache line instead of F strided ones.
    """
    b, _, h, w = planes.shape
    feats = planes[:, : 3 * channels].reshape(b, 3, channels, h, w)
    return feats.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _plane_coordinates(points: Tensor, cube_scale: float, plane_dim: int) -> Tensor:
    """points [B, P, 3] (world) → their (column, row) on each plane in [−1, 1], the planes stacked at
    ``plane_dim``: [B, 3, P, 2] for plane_dim 1, [B, P, 3, 2] for plane_dim 2."""
    coords = points / cube_scale
    return torch.stack([coords[..., list(axes)] for axes in PLANE_AXES], dim=plane_dim)


def sample_triplanes(planes: Tensor, points: Tensor, cube_scale: float) -> Tensor:
    """Bilinear samples of each plane: planes [B, 3, F, R, R], points [B, P, 3] (world) → [B, 3, F, P].

    The field's input on CUDA (:func:`mean_triplane_features` averages the three); on CPUs the reference that
    the corner gather is tested against, and the per-plane lookup the original's fixtures record.
    """
    b, _, f, h, w = planes.shape
    grid = _plane_coordinates(points, cube_scale, plane_dim=1)
    # grid_sampler_2d is F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True) minus the
    # dispatch to cuDNN's sampler, which rejects feature-last planes and grids of millions of points.
    sampled = torch.grid_sampler_2d(
        planes.reshape(b * 3, f, h, w), grid.reshape(b * 3, 1, -1, 2), 0, 0, True
    )  # [B*3, F, 1, P]
    return sampled.reshape(b, 3, f, -1)


def mean_triplane_features(planes: Tensor, points: Tensor, cube_scale: float) -> Tensor:
    """The field's input: the mean of the three planes' features. planes [B, 3, F, R, R], points [B, P, 3] → [B, P, F].

    On CUDA: the native bilinear sampler, then the mean. On CPUs the 12 weighted corners of a point (4 per
    plane) are summed in one gather from the feature-last planes (:class:`_CornerGather`): the same values,
    without the CPU sampler's backward, which writes its gradient channel-first (strided scatters) and so
    forces transposing copies of the planes' gradient. The gain, measured: benchmarks/RESULTS.md ("CPU: figures
    the code cites").
    """
    if planes.is_cuda:
        # Averaging while the feature axis is still outer keeps the reduction over contiguous memory.
        return sample_triplanes(planes, points, cube_scale).mean(dim=1).transpose(1, 2)
    b, _, f, h, w = planes.shape
    table = planes.permute(0, 1, 3, 4, 2).reshape(-1, f)  # a view for split_planes' feature-last planes
    index, weights = _corner_index_and_weights(_plane_coordinates(points, cube_scale, plane_dim=2), h, w)
    return _CornerGather.apply(table, index, weights.to(table.dtype)).reshape(b, -1, f)


def _corner_index_and_weights(grid: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Rows of the [B·3·H·W, F] feature-last table and the weights that give the mean of the three planes'
    bilinear samples (align_corners=True, zero padding) at plane coordinates ``grid`` [B, P, 3, 2].

    → index [B·P, 12] and weights [B·P, 12]; a corner outside its plane gets weight 0 (any row). The index is int32
    (half of what the gather keeps for its backward) unless the table has 2³¹ rows or more.
    """
    b, p = grid.shape[:2]
    index_dtype = torch.int32 if b * 3 * h * w < 2**31 else torch.int64
    pixel = (grid + 1) * grid.new_tensor([(w - 1) / 2, (h - 1) / 2])
    corner = pixel.floor()
    frac = pixel - corner
    # Both neighbours of each coordinate at once ([..., 2] = this one, the next one), then the 2 × 2 corners of
    # each plane by broadcasting (row-major: (row, col) = (0, 0), (0, 1), (1, 0), (1, 1)). A corner outside its
    # plane multiplies its weight by 0: (w_col · in_col) · (w_row · in_row) = w_col · w_row · inside exactly.
    arange = torch.arange(max(b, 3), device=grid.device, dtype=index_dtype)
    near = corner.to(index_dtype)[..., None] + arange[:2]  # [B, P, 3, 2 (col, row), 2]
    size = torch.tensor([w, h], device=grid.device, dtype=index_dtype)[:, None]
    inside = (near >= 0) & (near < size)
    weight = torch.stack([1 - frac, frac], dim=-1) * inside  # [B, P, 3, 2, 2]
    near = torch.minimum(near.clamp_(min=0), size - 1)
    first_row = (arange[:b, None, None] * 3 + arange[:3]) * (h * w)  # [B, 1, 3]
    index = (first_row[..., None, None] + near[..., 1, :, None] * w) + near[..., 0, None, :]
    weights = weight[..., 0, None, :] * weight[..., 1, :, None] / 3
    return index.reshape(b * p, 12), weights.reshape(b * p, 12)


# Values in one chunk of _corner_gradient's K-fold temporary (128 MB in fp32).
CORNER_GRADIENT_CHUNK_VALUES = 2**25


def _corner_gradient(table: Tensor, index: Tensor, weights: Tensor, grad_out: Tensor) -> Tensor:
    """Σ over (q, k) of weights[q, k] · grad_out[q] into row index[q, k] of a zero table shaped like ``table``.

    One ``index_add_`` over all K corner slots of a chunk of points instead of one per slot: on CPUs each call
    is a scatter whose fixed cost dominates (benchmarks/RESULTS.md, "Where the time goes"). The chunks bound the
    K-fold temporary (Q·K·F values: 1.2 GB for ffhq256's batch of 4 unchunked) and add in the same order.
    """
    grad_table = torch.zeros_like(table)
    q, k = index.shape
    rows = max(1, CORNER_GRADIENT_CHUNK_VALUES // (k * table.shape[1]))
    for start in range(0, q, rows):
        chunk = slice(start, start + rows)
        spread = (grad_out[chunk, None, :] * weights[chunk, :, None]).reshape(-1, table.shape[1])
        grad_table.index_add_(0, index[chunk].reshape(-1), spread.to(table.dtype))
    return grad_table


class _CornerGather(torch.autograd.Function):
    """out[q] = Σ_k weights[q, k] · table[index[q, k]]: table [N, F], index/weights [Q, K] → [Q, F].

    The backward accumulates into a feature-last gradient with one ``index_add_`` over all corner slots
    (``_corner_gradient``); a backward that builds a graph (R1's double backward) takes one differentiable
    ``index_add_`` per corner slot instead.
    Mixed dtypes (bf16 autocast): the weights take the table's dtype, and each gradient is computed in the
    incoming gradient's dtype and returned in its input's.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(table, index, weights)
        return F.embedding_bag(index, table, per_sample_weights=weights.to(table.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        table, index, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            w = weights.to(grad_out.dtype)
            if torch.is_grad_enabled():  # a double backward: one differentiable index_add_ per corner slot
                grad_table = torch.zeros_like(table)
                for k in range(index.shape[1]):
                    grad_table.index_add_(0, index[:, k], (grad_out * w[:, k, None]).to(table.dtype))
            else:
                grad_table = _corner_gradient(table, index, w, grad_out)
        if ctx.needs_input_grad[2]:
            t = table.to(grad_out.dtype)
            grad_weights = torch.stack([(grad_out * t[index[:, k]]).sum(-1) for k in range(index.shape[1])],
                                       dim=1).to(weights.dtype)
        return grad_table, None, grad_weights


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

    def __init__(self, channels: int, cube_scale: float, hidden: int = 64, num_layers: int = 2,
                 density_gain: float = 1.0) -> None:
        super().__init__()
        self.channels, self.cube_scale, self.density_gain = channels, cube_scale, density_gain
        self.mlp = TriPlaneMLP(channels, hidden, num_layers)

    def forward(self, planes: Tensor, points: Tensor) -> Tensor:
        """planes [B, 3, F, R, R], points [B, P, 3] (world units) → [B, P, 4] = (r, g, b, raw density);
        the raw density is the MLP's × ``density_gain``."""
        out = self.mlp(mean_triplane_features(planes, points, self.cube_scale))
        if self.density_gain == 1.0:
            return out
        return torch.cat([out[..., :3], out[..., 3:] * self.density_gain], dim=-1)
