"""Model-core speed on the paper's ffhq256 configuration, beside the original's figures.

    python benchmarks/bench_core.py [--batch 4] [--repeats 3] [--device cpu] [--out benchmarks/results/core.json]

Prints a table (median wall seconds over ``--repeats`` after one warm-up) and writes JSON with the
environment. The original's numbers come from ../shared/REFERENCE_TIMINGS.md (2-core x86-64, torch
2.13 CPU, fp32, kimg 0, batch 4); compare ratios measured on the same kind of machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from epigraf.config import preset
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.patches import sample_patch_params
from epigraf.schedules import adam_settings_for_lazy_reg

# Original implementation, batch 4, seconds (REFERENCE_TIMINGS.md; ranges → their midpoint).
ORIGINAL_B4 = {
    "G forward, 64² patches, no grad": 11.6,
    "G forward, full 256² image, no grad": 50.8,
    "D forward+backward": 1.61,
    "G+D training step (G phase + D phase)": 38.4 + 13.3,
}


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    once()  # warm-up: allocator, lazy init, kernel selection
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ffhq256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core.json"))
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    G = Generator(cfg.generator).to(device).train()
    D = Discriminator(cfg.discriminator).to(device).train()
    b, r = args.batch, cfg.patch.resolution
    z = torch.randn(b, cfg.generator.z_dim, device=device)
    c = torch.zeros(b, cfg.generator.c_dim, device=device) if cfg.generator.c_dim else None
    angles = torch.tensor([[0.0, 1.5708, 0.0]], device=device).repeat(b, 1)
    pp = sample_patch_params(b, cfg.patch, kimg=0.0).to(device)
    real = torch.rand(b, 3, r, r, device=device) * 2 - 1

    g_opt = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
    d_lr, d_betas = adam_settings_for_lazy_reg(0.002, (0.0, 0.99), 16)
    d_opt = torch.optim.Adam(D.parameters(), lr=d_lr, betas=d_betas, eps=1e-8)

    def g_patch_forward() -> None:
        with torch.no_grad():
            G(z, c, angles, patch_params=pp, noise_mode="random", nerf_noise_std=1.0)

    def g_full_forward() -> None:
        with torch.no_grad():
            G.eval()(z, c, angles, noise_mode="random")
        G.train()

    def d_forward_backward() -> None:
        D.zero_grad(set_to_none=True)
        F.softplus(-D(real, c, pp)).mean().backward()

    def train_step() -> None:
        g_opt.zero_grad(set_to_none=True)
        fake = G(z, c, angles, patch_params=pp, noise_mode="random", nerf_noise_std=1.0).image
        F.softplus(-D(fake, c, pp)).mean().backward()
        g_opt.step()
        d_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = G(z, c, angles, patch_params=pp, noise_mode="random", nerf_noise_std=1.0,
                     update_emas=True).image
        (F.softplus(D(fake, c, pp)).mean() + F.softplus(-D(real, c, pp)).mean()).backward()
        d_opt.step()

    cases = {
        "G forward, 64² patches, no grad": g_patch_forward,
        "G forward, full 256² image, no grad": g_full_forward,
        "D forward+backward": d_forward_backward,
        "G+D training step (G phase + D phase)": train_step,
    }
    rows = []
    for name, fn in cases.items():
        ours = timed(fn, args.repeats, device)
        original = ORIGINAL_B4.get(name) if (args.batch == 4 and args.preset == "ffhq256") else None
        rows.append({"case": name, "ours_s": ours, "original_s": original,
                     "speedup": original / ours if original else None})

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "preset": args.preset, "batch": b, "repeats": args.repeats,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }
    print(f"{args.preset}, batch {b}, {env['device']}, {env['torch_threads']} threads, torch {env['torch']}")
    print(f"{'case':42s} {'ours (s)':>9s} {'original (s)':>13s} {'speed-up':>9s}")
    for row in rows:
        orig = f"{row['original_s']:.2f}" if row["original_s"] else "–"
        sp = f"{row['speedup']:.2f}×" if row["speedup"] else "–"
        print(f"{row['case']:42s} {row['ours_s']:9.2f} {orig:>13s} {sp:>9s}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
