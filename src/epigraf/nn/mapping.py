"""Mapping networks: z (+ conditioning) → w (docs/method.md §1.1, §4.3–4.4).

The same mechanism serves the generator (z + class/pose conditioning → ws, with a tracked w average
for truncation) and the discriminator's hypernetwork and projection head (z_dim 0: conditioning only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from epigraf.nn.layers import FullyConnected, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """[normalise(z), normalise(embed(c))] → ``num_layers`` lrelu FC layers (lr multiplier 0.01) → w.

    With ``w_avg_beta`` set, the batch-mean w is tracked as ``w_avg`` (the truncation centre) when
    ``update_emas`` is passed.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_layers: int = 2,
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
    ) -> None:
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError("a mapping network needs a latent or a conditioning input")
        self.z_dim, self.c_dim, self.w_dim, self.w_avg_beta = z_dim, c_dim, w_dim, w_avg_beta
        if c_dim > 0:
            self.embed = FullyConnected(c_dim, w_dim)
        in_features = z_dim + (w_dim if c_dim > 0 else 0)
        for i in range(num_layers):
            layer = FullyConnected(in_features if i == 0 else w_dim, w_dim, activation=True,
                                   lr_multiplier=lr_multiplier)
            self.add_module(f"fc{i}", layer)
        self.num_layers = num_layers
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor | None, c: Tensor | None, update_emas: bool = False) -> Tensor:
        """z [B, z_dim] or None, c [B, c_dim] or None → w [B, w_dim]."""
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        return x

    def truncate(self, w: Tensor, psi: float) -> Tensor:
        """w ← w_avg + ψ (w − w_avg)."""
        return w if psi == 1 else self.w_avg.to(w.dtype).lerp(w, psi)
