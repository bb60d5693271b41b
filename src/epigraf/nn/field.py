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
    grid = _plane_coordinates(points, cube_scale, plane_dim=2)
    # The cells serve only the planes' gradient: renders without one (D's fakes, inference) skip them.
    index, weights, cells = _corner_index_and_weights(grid, h, w, planes.requires_grad and torch.is_grad_enabled())
    return _CornerGather.apply(table, index, weights.to(table.dtype), cells, (h, w)).reshape(b, -1, f)


def _corner_index_and_weights(grid: Tensor, h: int, w: int, with_cells: bool
                              ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Rows of the [B·3·H·W, F] feature-last table and the weights that give the mean of the three planes'
    bilinear samples (align_corners=True, zero padding) at plane coordinates ``grid`` [B, P, 3, 2], and the cell
    of each point on each plane.

    → index [B·P, 12] and weights [B·P, 12] (plane-major, then the corners (row, col) = (0, 0), (0, 1), (1, 0),
    (1, 1)); a corner outside its plane gets weight 0 (any row). cells [B·P, 3]: on each plane, the row of the
    point's top-left corner (r, c) in its sample's three (H + 1) × (W + 1) grids of cells, r, c ∈ [−1, H − 1] ×
    [−1, W − 1] shifted by one (clamped there where all four weights are 0), or None unless ``with_cells``. Indices
    are int32 unless the table has 2³¹ rows or more.
    """
    b, p = grid.shape[:2]
    index_dtype = torch.int32 if b * 3 * h * w < 2**31 else torch.int64
    # Every op on whole [B, P, 3] arrays, one coordinate at a time: broadcasting over trailing axes of 2 runs
    # TensorIterator's inner loop 2 elements long, several times slower.
    col = (grid[..., 0] + 1) * ((w - 1) / 2)
    row = (grid[..., 1] + 1) * ((h - 1) / 2)
    col_floor, row_floor = col.floor(), row.floor()
    col_frac, row_frac = col - col_floor, row - row_floor
    c0, r0 = col_floor.to(index_dtype), row_floor.to(index_dtype)
    # A corner outside its plane multiplies its weight by 0: (w_col · in_col) · (w_row · in_row) = w_col · w_row
    # exactly when both are inside. c0 + 1 is compared as c0 ≥ −1 / c0 < w − 1 so that no index overflows.
    w_c0 = (1 - col_frac) * ((c0 >= 0) & (c0 < w))
    w_c1 = col_frac * ((c0 >= -1) & (c0 < w - 1))
    w_r0 = (1 - row_frac) * ((r0 >= 0) & (r0 < h))
    w_r1 = row_frac * ((r0 >= -1) & (r0 < h - 1))
    # Corners (row, col) = (0, 0), (0, 1), (1, 0), (1, 1) of each plane.
    weights = torch.stack([w_r0 * w_c0, w_r0 * w_c1, w_r1 * w_c0, w_r1 * w_c1], dim=-1) / 3
    plane = torch.arange(3, device=grid.device, dtype=index_dtype)
    first_row = (torch.arange(b, device=grid.device, dtype=index_dtype)[:, None, None] * 3 + plane) * (h * w)
    row0 = first_row + r0.clamp(0, h - 1) * w
    row1 = first_row + (r0 + 1).clamp_(0, h - 1) * w
    col0, col1 = c0.clamp(0, w - 1), (c0 + 1).clamp_(0, w - 1)
    index = torch.stack([row0 + col0, row0 + col1, row1 + col0, row1 + col1], dim=-1)
    index, weights = index.reshape(b * p, 12), weights.reshape(b * p, 12)
    if not with_cells:
        return index, weights, None
    cells = plane * ((h + 1) * (w + 1)) + (r0.clamp(-1, h - 1) + 1) * (w + 1) + (c0.clamp(-1, w - 1) + 1)
    return index, weights, cells.reshape(b * p, 3)


# Values in one chunk of _corner_gradient's spread (128 MB in fp32).
CORNER_GRADIENT_CHUNK_VALUES = 2**25


def _corner_gradient(cells: Tensor, weights: Tensor, grad_out: Tensor, batch: int, plane_shape: tuple[int, int]
                     ) -> Tensor:
    """The gather's gradient: Σ over the points q and corners k of weights[q, k] · grad_out[q] into each corner's
    texel, as the feature-last table [batch·3·H·W, F] (points sample-major, as ``_corner_index_and_weights``).

    ``index_add_`` is a serial scatter whose cost grows with the rows it adds (benchmarks/RESULTS.md, "Where the
    time goes"), so the four corners of a point on a plane travel as one row of 4F values into the point's cell
    (3 rows a point instead of 12 of F), and each texel then sums the four cells it is a corner of. One sample at a
    time, so that the cells' table (4× a sample's planes) stays small; the chunks bound the spread's temporary.
    """
    h, w = plane_shape
    q, f = grad_out.shape
    per_sample = q // batch
    grad = grad_out.new_empty(batch, 3, h, w, f)
    cell_grad = grad_out.new_empty(3 * (h + 1) * (w + 1), 4 * f)
    by_corner = cell_grad.view(3, h + 1, w + 1, 4, f)
    rows = max(1, CORNER_GRADIENT_CHUNK_VALUES // (12 * f))
    for i in range(batch):
        cell_grad.zero_()
        for start in range(i * per_sample, (i + 1) * per_sample, rows):
            chunk = slice(start, min(start + rows, (i + 1) * per_sample))
            spread = weights[chunk].view(-1, 3, 4, 1) * grad_out[chunk, None, None, :]  # [n, 3, 4, F]
            cell_grad.index_add_(0, cells[chunk].reshape(-1), spread.view(-1, 4 * f))
        # Texel (y, x) is corner (dy, dx) of cell (y − dy, x − dx), stored at (y − dy + 1, x − dx + 1).
        sample = torch.add(by_corner[:, 1:, 1:, 0], by_corner[:, 1:, :-1, 1], out=grad[i])
        sample += by_corner[:, :-1, 1:, 2]
        sample += by_corner[:, :-1, :-1, 3]
    return grad.view(-1, f)


class _CornerGather(torch.autograd.Function):
    """out[q] = Σ_k weights[q, k] · table[index[q, k]]: table [N, F], index/weights [Q, 12] → [Q, F], for the
    planes' corners of ``_corner_index_and_weights`` (cells [Q, 3], needed when the table takes a gradient, and
    plane_shape (H, W) serve the backward).

    The first-order backward accumulates per cell (``_corner_gradient``); a backward that builds a graph (a
    double backward) takes one differentiable ``index_add_`` per corner slot instead.
    Mixed dtypes (bf16 autocast): the weights take the table's dtype, and each gradient is computed in the
    incoming gradient's dtype and returned in its input's.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weights: Tensor, cells: Tensor | None,
                plane_shape: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(table, index, weights, cells)
        ctx.plane_shape = plane_shape
        return F.embedding_bag(index, table, per_sample_weights=weights.to(table.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None, None, None]:
        table, index, weights, cells = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            w = weights.to(grad_out.dtype)
            if torch.is_grad_enabled():  # a double backward: one differentiable index_add_ per corner slot
                grad_table = torch.zeros_like(table)
                for k in range(index.shape[1]):
                    grad_table.index_add_(0, index[:, k], (grad_out * w[:, k, None]).to(table.dtype))
            else:
                batch = table.shape[0] // (3 * ctx.plane_shape[0] * ctx.plane_shape[1])
                grad_table = _corner_gradient(cells, w, grad_out, batch, ctx.plane_shape).to(table.dtype)
        if ctx.needs_input_grad[2]:
            t = table.to(grad_out.dtype)
            grad_weights = torch.stack([(grad_out * t[index[:, k]]).sum(-1) for k in range(index.shape[1])],
                                       dim=1).to(weights.dtype)
        return grad_table, None, grad_weights, None, None


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
