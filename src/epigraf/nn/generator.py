"""The EpiGRAF generator: mapping → tri-plane synthesis → field → volume rendering (docs/method.md §1–2).

There is no 2D upsampler: every pixel, of a full view or of a training patch, is a rendered ray.

    G = Generator(preset("ffhq256").generator)
    out = G(z, c, camera_angles)                      # full view: out.image [B, 3, R, R], out.depth
    out = G(z, c, camera_angles, patch_params=pp)     # training patch: [B, 3, r, r]

The stages are public so tri-planes can be computed once and rendered from many cameras::

    ws = G.mapping(z, c, truncation_psi=0.7)          # [B, num_ws, w_dim]
    planes = G.synthesize(ws)                         # [B, 3F (+3), R_p, R_p]
    out = G.render(planes, Cameras.from_angles(angles, fov=12.0, radius=1.0))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epigraf.cameras import Cameras, checked_angles, conditioning_angles
from epigraf.cameras.rays import patch_grid, pixel_grid, world_rays
from epigraf.config import GeneratorConfig
from epigraf.nn.background import SphereBackground
from epigraf.nn.field import TriPlaneField, split_planes
from epigraf.nn.mapping import MappingNetwork
from epigraf.nn.synthesis import TriPlaneSynthesis
from epigraf.patches import PatchParams, extract_patches
from epigraf.render.volume import RaySamplingOptions, render_rays_chunked


@dataclass
class GeneratorOutput:
    """One render: image [B, 3, H, W] (data range ≈ [−1, 1], not clamped), depth [B, 1, H, W] (distance
    along the unit ray, Σ wᵢ zᵢ), opacity [B, 1, H, W] (Σ wᵢ, the foreground's accumulated alpha) and, when
    asked for, the weights' distortion [B, 1, H, W] (``render.compositing.weight_distortion``)."""

    image: Tensor
    depth: Tensor
    opacity: Tensor
    distortion: Tensor | None = None


class GeneratorMapping(MappingNetwork):
    """z, class labels and (with GPC) the conditioning camera → ws [B, num_ws, w_dim], with truncation."""

    def __init__(self, cfg: GeneratorConfig, num_ws: int) -> None:
        cond_dim = cfg.c_dim + (2 if cfg.camera_cond else 0)
        super().__init__(cfg.z_dim, cond_dim, cfg.w_dim, cfg.mapping_layers)
        self.num_ws, self.label_dim, self.camera_cond = num_ws, cfg.c_dim, cfg.camera_cond
        self.camera_cond_drop_p, self.camera_cond_noise_std = cfg.camera_cond_drop_p, cfg.camera_cond_noise_std
        # The dataset's mean pose: the conditioning camera at evaluation when none is given.
        self.register_buffer("mean_camera_pose", torch.tensor(cfg.mean_camera_pose, dtype=torch.float32))

    def forward(
        self,
        z: Tensor,
        c: Tensor | None = None,
        truncation_psi: float = 1.0,
        camera_angles: Tensor | None = None,
        update_emas: bool = False,
    ) -> Tensor:
        """z [B, z_dim], c [B, c_dim] or None, camera_angles [B, 3] or None → ws [B, num_ws, w_dim]."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {list(z.shape)}")
        cond = [_checked_labels(c, self.label_dim, z.shape[0])] if self.label_dim > 0 else []
        if self.camera_cond:
            cond.append(self._camera_condition(camera_angles, z))
        w = super().forward(z, torch.cat(cond, dim=1) if cond else None, update_emas=update_emas)
        return self.truncate(w, truncation_psi)[:, None].expand(-1, self.num_ws, -1)

    def _camera_condition(self, camera_angles: Tensor | None, z: Tensor) -> Tensor:
        if camera_angles is None:
            camera_angles = self.mean_camera_pose[None].expand(z.shape[0], -1)
        elif camera_angles.shape != (z.shape[0], 3):
            raise ValueError(f"conditioning camera angles must be [{z.shape[0]}, 3], got {list(camera_angles.shape)}")
        angles = conditioning_angles(camera_angles.to(z.dtype))
        if self.training and self.camera_cond_noise_std > 0:
            angles = angles + torch.randn_like(angles) * self.camera_cond_noise_std * angles.std(dim=0, keepdim=True)
        if self.training and self.camera_cond_drop_p > 0:
            angles = F.dropout(angles, p=self.camera_cond_drop_p)
        return angles


def _checked_labels(c: Tensor | None, c_dim: int, batch_size: int) -> Tensor:
    if c is None or c.shape != (batch_size, c_dim):
        got = None if c is None else list(c.shape)
        raise ValueError(f"this model is conditional: c must be [{batch_size}, {c_dim}], got {got}")
    return c


class Generator(nn.Module):
    """EpiGRAF generator. ``cfg`` fixes the architecture, the virtual camera and the renderer."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        plane_channels = 3 * cfg.triplane_channels + (3 if cfg.render.background == "plane" else 0)
        self.synthesis = TriPlaneSynthesis(
            cfg.w_dim, cfg.triplane_resolution, plane_channels, cfg.channel_base, cfg.channel_max,
            cfg.use_noise, cfg.conv_clamp,
        )
        self.field = TriPlaneField(cfg.triplane_channels, cfg.camera.cube_scale, cfg.mlp_hidden, cfg.mlp_layers,
                                   cfg.density_gain)
        self.num_ws = self.synthesis.num_ws
        if cfg.render.background == "sphere":
            self.background = SphereBackground(cfg.render.sphere, cfg.w_dim)
            self.num_ws += self.background.num_ws
        self.mapping = GeneratorMapping(cfg, self.num_ws)

    @property
    def z_dim(self) -> int:
        return self.cfg.z_dim

    @property
    def c_dim(self) -> int:
        return self.cfg.c_dim

    def synthesize(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """ws [B, num_ws, w_dim] → tri-plane decoder output [B, 3F (+3 with a plane background), R_p, R_p].

        The decoder uses the first ``synthesis.num_ws`` slots; a sphere background uses the rest (pass the
        same ws to ``render``)."""
        return self.synthesis(ws[:, : self.synthesis.num_ws], noise_mode)

    def cameras(self, camera_angles: Tensor, fov: float | Tensor | None = None,
                radius: float | Tensor | None = None) -> Cameras:
        """The model's camera at the given angles [B, 3]; fov (degrees) and radius default to the config's."""
        cam = self.cfg.camera
        return Cameras.from_angles(checked_angles(camera_angles), cam.fov if fov is None else fov,
                                   cam.radius if radius is None else radius)

    def render(
        self,
        planes: Tensor,
        cameras: Cameras,
        patch_params: PatchParams | None = None,
        resolution: int | None = None,
        deterministic: bool = False,
        nerf_noise_std: float = 0.0,
        generator: torch.Generator | None = None,
        ws: Tensor | None = None,
        with_distortion: bool = False,
    ) -> GeneratorOutput:
        """Volume-render tri-planes [B, C, R_p, R_p] from ``cameras``.

        Without ``patch_params``: the full view at ``resolution`` (default: the image resolution).
        With them: an r×r patch (default r = patch resolution) of the R×R image. ``ws`` [B, num_ws, w_dim]
        is needed only by a sphere background, whose MLP is modulated by the last slots.
        """
        b = planes.shape[0]
        if cameras.batch_size != b:
            raise ValueError(f"{cameras.batch_size} cameras for {b} tri-planes")
        if patch_params is None:
            res = resolution or self.cfg.image_resolution
            grid = pixel_grid(res, res, device=planes.device)[None]
        else:
            if len(patch_params) != b:
                raise ValueError(f"{len(patch_params)} patch params for a batch of {b}")
            res = resolution or self.cfg.patch_resolution
            on_device = patch_params.to(planes.device)
            grid = patch_grid(on_device.scales, on_device.offsets, res)
        origins, directions = world_rays(cameras.to(planes.device), grid)

        feats = split_planes(planes, self.cfg.triplane_channels)

        def field(points: Tensor) -> Tensor:
            return self.field(feats, points.reshape(b, -1, 3)).reshape(*points.shape[:-1], 4)

        rcfg, cam = self.cfg.render, self.cfg.camera
        opts = RaySamplingOptions(
            num_steps=rcfg.num_ray_steps, near=cam.ray_start, far=cam.ray_end, deterministic=deterministic,
            nerf_noise_std=0.0 if deterministic else nerf_noise_std, density_shift=rcfg.density_shift,
            clamp_mode=rcfg.clamp_mode, white_back=rcfg.white_back, last_back=rcfg.last_back,
            open_far_end=rcfg.background is not None or rcfg.open_far_end, distortion=with_distortion,
        )
        rays = render_rays_chunked(field, origins, directions, opts, rcfg.chunk_rays, generator)

        def to_image(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(b, x.shape[-1], res, res)

        image = to_image(rays.color)
        drawn = rcfg.background if rcfg.draw_background else None
        if drawn == "plane":
            image = image + self._plane_background(planes, patch_params, res) * to_image(rays.final_transmittance)
        elif drawn == "sphere":
            if ws is None:
                raise ValueError("a sphere-background generator needs ws in render() for its background MLP")
            bg = self.background(origins, directions, ws[:, self.synthesis.num_ws :], rcfg.white_back,
                                 rcfg.clamp_mode, deterministic, generator)
            image = image + to_image(bg * rays.final_transmittance)
        distortion = None if rays.distortion is None else to_image(rays.distortion)
        return GeneratorOutput(image, to_image(rays.depth), to_image(rays.opacity), distortion)

    def _plane_background(self, planes: Tensor, patch_params: PatchParams | None, res: int) -> Tensor:
        """The decoder's 3 extra channels as a 2D backdrop, resized (align-corners bilinear) and cropped like
        the rays. → [B, 3, res, res]."""
        bg = planes[:, 3 * self.cfg.triplane_channels :]
        if patch_params is None:
            return F.interpolate(bg, size=(res, res), mode="bilinear", align_corners=True)
        full = self.cfg.image_resolution
        bg = F.interpolate(bg, size=(full, full), mode="bilinear", align_corners=True)
        return extract_patches(bg, patch_params.to(bg.device), res)

    def forward(
        self,
        z: Tensor,
        c: Tensor | None,
        camera_angles: Tensor,
        patch_params: PatchParams | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "const",
        deterministic: bool = False,
        resolution: int | None = None,
        *,
        fov: float | Tensor | None = None,
        radius: float | Tensor | None = None,
        camera_angles_cond: Tensor | None = None,
        nerf_noise_std: float = 0.0,
        update_emas: bool = False,
        generator: torch.Generator | None = None,
        with_distortion: bool = False,
    ) -> GeneratorOutput:
        """z [B, z_dim], c [B, c_dim] or None, camera_angles [B, 3] (yaw, pitch, roll; radians) → GeneratorOutput.

        ``deterministic`` switches off every random part of rendering (stratified jitter, random importance
        samples, NeRF density noise) and uses the stored constant StyleGAN noise. ``camera_angles_cond`` is the
        pose-conditioning camera (GPC); when the model is pose-conditioned and it is None, the mean pose is used.
        """
        if camera_angles.ndim != 2 or camera_angles.shape != (z.shape[0], 3):
            raise ValueError(f"camera_angles must be [{z.shape[0]}, 3] (yaw, pitch, roll), got "
                             f"{list(camera_angles.shape)}")
        cameras = self.cameras(camera_angles, fov, radius)
        ws = self.mapping(z, c, truncation_psi, camera_angles_cond, update_emas=update_emas)
        planes = self.synthesize(ws, "const" if deterministic and noise_mode == "random" else noise_mode)
        return self.render(planes, cameras, patch_params, resolution, deterministic, nerf_noise_std, generator, ws,
                           with_distortion)

