"""How far one D step moves the logits, and which parameters move them (issue 11, item 2).

    python benchmarks/d_logit_jump.py [--preset ffhq256] [--batch 4] [--smooth-reals]

Runs the real D phase (``PatchGANLoss.discriminator_loss`` + ``optimizer_step``) once on fixed inputs,
as ``bench_core.py`` does, then applies that step's Adam update to one parameter group at a time and
prints the fake and real logits after each. Adam's first step with β1 = 0 and bias correction moves every
parameter with a nonzero gradient by lr·g/(|g| + ε) ≈ ±lr whatever |g| is, so the first-order change of a
logit is ≈ lr·Σ|∂logit/∂θ| over the group (the "predicted" column).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from epigraf.config import preset
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.patches import sample_patch_params
from epigraf.process_settings import flush_denormals
from epigraf.schedules import adam_settings_for_lazy_reg
from epigraf.train.distributed import DistEnv
from epigraf.train.draws import FakeDraws, RealBatch
from epigraf.train.loop import optimizer_step
from epigraf.train.loss import PatchGANLoss


def parameter_group(name: str) -> str:
    """A coarse name for where a D parameter sits."""
    if name.startswith(("hyper_mod_mapping", "head_mapping", "scalar_enc")):
        return name.split(".")[0] + (".embed" if ".embed." in name else "")
    if ".conv1.affine." in name:
        return "blocks: hyper-modulation affines"
    if name.startswith("b4."):
        return "epilogue b4"
    return "blocks: convolutions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ffhq256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--kimg", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=1, help="D steps on the same inputs before the breakdown")
    parser.add_argument("--smooth-reals", action="store_true",
                        help="reals = bilinearly up-sampled 8² noise (image-like) instead of per-pixel noise")
    args = parser.parse_args()
    flush_denormals()
    torch.manual_seed(0)
    cfg = preset(args.preset)
    G, D = Generator(cfg.generator).train(), Discriminator(cfg.discriminator).train()
    b, R = args.batch, cfg.generator.image_resolution
    real = torch.rand(b, 3, R, R) * 2 - 1
    if args.smooth_reals:
        real = F.interpolate(torch.rand(b, 3, 8, 8) * 2 - 1, size=(R, R), mode="bilinear", align_corners=True)
    x = RealBatch(real, torch.zeros(b, 0), torch.tensor([[0.0, 1.5708, 0.0]]).repeat(b, 1))
    fake_angles = torch.tensor([[0.1, 1.5, 0.0]]).repeat(b, 1)
    pp_fake, pp_real = (sample_patch_params(b, cfg.patch, args.kimg) for _ in range(2))
    fakes = FakeDraws(torch.randn(b, cfg.generator.z_dim), torch.zeros(b, 0), fake_angles, fake_angles, pp_fake)
    loss = PatchGANLoss(cfg, G, D, None, cfg.r1_gamma, 10.0, 200.0)
    with torch.no_grad():
        fake = loss.generate(fakes, args.kimg).image
    real_patch = loss.real_patches(x, pp_real)

    def logits() -> tuple[float, float]:
        with torch.no_grad():
            return (loss.discriminate(fake, fakes.c, pp_fake, fake_angles, args.kimg).mean().item(),
                    loss.discriminate(real_patch, x.c, pp_real, x.camera_angles, args.kimg).mean().item())

    params = dict(D.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    fake0, real0 = logits()
    # ∂(mean fake logit)/∂θ for the first-order prediction of each group's effect.
    D.zero_grad(set_to_none=True)
    loss.discriminate(fake, fakes.c, pp_fake, fake_angles, args.kimg).mean().backward()
    fake_grad = {k: v.grad.detach().clone() if v.grad is not None else torch.zeros_like(v) for k, v in params.items()}

    d_lr, d_betas = adam_settings_for_lazy_reg(0.002, (0.0, 0.99), 16)
    opt = torch.optim.Adam(list(params.values()), lr=d_lr, betas=d_betas, eps=1e-8)
    d_loss = (F.softplus(loss.discriminate(fake, fakes.c, pp_fake, fake_angles, args.kimg)).mean()
              + F.softplus(-loss.discriminate(real_patch, x.c, pp_real, x.camera_angles, args.kimg)).mean())
    optimizer_step(opt, list(params.values()), d_loss, DistEnv(0, 1, torch.device("cpu")))
    after = {k: v.detach().clone() for k, v in params.items()}
    fake1, real1 = logits()
    trajectory = [(fake1, real1)]
    for _ in range(args.steps - 1):  # the same batch again, as a benchmark repeating one phase does
        d_loss = (F.softplus(loss.discriminate(fake, fakes.c, pp_fake, fake_angles, args.kimg)).mean()
                  + F.softplus(-loss.discriminate(real_patch, x.c, pp_real, x.camera_angles, args.kimg)).mean())
        optimizer_step(opt, list(params.values()), d_loss, DistEnv(0, 1, torch.device("cpu")))
        trajectory.append(logits())
    print(f"{args.preset}, batch {b}, kimg {args.kimg}, reals {'smooth' if args.smooth_reals else 'pixel noise'}; "
          f"D lr {d_lr:.6f}")
    print(f"before the step: fake {fake0:+.2f} real {real0:+.2f}; after one Adam step of all of D: "
          f"fake {fake1:+.2f} real {real1:+.2f}")
    print("mean logits (fake, real) after each step on the same batch: "
          + ", ".join(f"({f:+.1f}, {r:+.1f})" for f, r in trajectory))
    step_sizes = torch.cat([(after[k] - before[k]).abs().flatten() for k in params])
    print(f"|Δθ| over all {step_sizes.numel():,} parameters: median {step_sizes.median():.6f}, "
          f"max {step_sizes.max():.6f} (lr {d_lr:.6f})")

    groups = sorted({parameter_group(k) for k in params})
    print(f"{'only this group stepped':40s} {'params':>11s} {'fake':>8s} {'real':>8s} {'Δfake':>8s} "
          f"{'predicted':>9s}")
    with torch.no_grad():
        for group in groups:
            names = [k for k in params if parameter_group(k) == group]
            for k, v in params.items():
                v.copy_(after[k] if k in names else before[k])
            predicted = sum((fake_grad[k] * (after[k] - before[k])).sum().item() for k in names)
            f, r = logits()
            count = sum(params[k].numel() for k in names)
            print(f"{group:40s} {count:11,d} {f:+8.2f} {r:+8.2f} {f - fake0:+8.2f} {predicted:+9.2f}")
        for k, v in params.items():
            v.copy_(after[k])


if __name__ == "__main__":
    main()
