"""Model-core and training-iteration speed on the paper's ffhq256 configuration, beside the original's figures.

    python benchmarks/bench_core.py [--batch 4] [--repeats 2] [--device cpu] [--no-malloc-tuning]
                                    [--keep-denormals] [--out benchmarks/results/core.json]

Prints a table (median wall seconds over ``--repeats`` after one warm-up) and writes JSON with the
environment. The training iteration runs the real training code (``epigraf.train.loss`` phases,
``optimizer_step``, ``update_ema``) at kimg 0 (blur σ = 10, patch scales ≈ 1, NeRF noise std 1), with
the R1 phase timed separately (the loop runs it every 16th iteration; "iteration" counts it every time,
as REFERENCE_TIMINGS.md does). The original's numbers come from ../shared/REFERENCE_TIMINGS.md (a
different 2-core x86-64 machine, torch 2.13 CPU, fp32, batch 4): compare ratios measured on the same
machine; absolute ratios across machines only bound what the code contributes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import device_name

from epigraf.config import preset
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.patches import sample_patch_params
from epigraf.process_settings import configure_cuda_for_training, denormals_flushed, flush_denormals, tune_cpu_allocator
from epigraf.train.augment import AugmentPipe
from epigraf.train.distributed import DistEnv
from epigraf.train.draws import FakeDraws, IterationDraws, RealBatch
from epigraf.train.loop import optimizer_step, update_ema
from epigraf.train.loss import PatchGANLoss
from epigraf.train.step import make_optimizers

# Original implementation, batch 4, seconds (REFERENCE_TIMINGS.md; ranges → their midpoint).
ORIGINAL_B4 = {
    "G forward, 64² patches, no grad": 11.6,
    "G forward+backward, 64² patches": 42.55,
    "G forward, full 256² image, no grad": 50.8,
    "D forward, no grad": 0.58,
    "D forward+backward": 1.61,
    "phase G (G fwd+bwd through D, Adam)": 38.4,
    "phase D (fakes, D fake+real fwd/bwd, Adam)": 13.3,
    "phase R1 (double backward)": 3.5,
    "EMA update": None,
    "training iteration (G + D + R1 + EMA)": 56.5,
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
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default allocator settings")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="do not flush subnormal floats to zero (shows the stall once D saturates)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core.json"))
    args = parser.parse_args()
    # Before any torch operation: torch's worker threads copy the flag from the thread that starts them.
    flushed = False if args.keep_denormals else flush_denormals()
    tuned = False if args.no_malloc_tuning else tune_cpu_allocator()

    device = torch.device(args.device)
    if device.type == "cuda":
        configure_cuda_for_training()
    torch.manual_seed(0)
    cfg = preset(args.preset)
    G = Generator(cfg.generator).to(device).train()
    G_ema = Generator(cfg.generator).to(device).eval().requires_grad_(False)
    D = Discriminator(cfg.discriminator).to(device).train()
    augment = AugmentPipe().to(device)  # p = 0 at kimg 0, as in the reference measurement
    b, R = args.batch, cfg.generator.image_resolution
    c_dim = cfg.generator.c_dim
    fake_angles = torch.tensor([[0.1, 1.5, 0.0]], device=device).repeat(b, 1)

    def patches_at_kimg_0():
        return sample_patch_params(b, cfg.patch, 0.0, device=device)

    def fakes() -> FakeDraws:
        return FakeDraws(torch.randn(b, cfg.generator.z_dim, device=device), torch.zeros(b, c_dim, device=device),
                         fake_angles, fake_angles, patches_at_kimg_0())

    real = RealBatch(torch.rand(b, 3, R, R, device=device) * 2 - 1, torch.zeros(b, c_dim, device=device),
                     torch.tensor([[0.0, 1.5708, 0.0]], device=device).repeat(b, 1))
    x = IterationDraws(real, fakes(), fakes(), patches_at_kimg_0(), patches_at_kimg_0())
    loss = PatchGANLoss(cfg, G, D, augment, cfg.r1_gamma, 10.0, 200.0)
    g_params, d_params = list(G.parameters()), list(D.parameters())
    g_opt, d_opt = make_optimizers(G, D, 0.0025, 0.002, 16)
    env = DistEnv(0, 1, device)
    z, c, pp = x.gall.z, x.gall.c if c_dim else None, x.gall.patch
    patches = real.images[:, :, : cfg.patch.resolution, : cfg.patch.resolution].contiguous()

    def g_patch_forward() -> None:
        with torch.no_grad():
            G(z, c, fake_angles, patch_params=pp, noise_mode="random", nerf_noise_std=1.0)

    def g_patch_backward() -> None:
        G.zero_grad(set_to_none=True)
        G(z, c, fake_angles, patch_params=pp, noise_mode="random", nerf_noise_std=1.0).image.mean().backward()

    def g_full_forward() -> None:
        with torch.no_grad():
            G.eval()(z, c, fake_angles, noise_mode="random")
        G.train()

    def d_forward() -> None:
        with torch.no_grad():
            D(patches, c, pp)

    def d_forward_backward() -> None:
        D.zero_grad(set_to_none=True)
        F.softplus(-D(patches, c, pp)).mean().backward()

    def phase_g() -> None:
        G.requires_grad_(True)
        D.requires_grad_(False)
        optimizer_step(g_opt, g_params, loss.generator_loss(x.gall, 0.0).loss, env)

    def phase_d() -> None:
        G.requires_grad_(False)
        D.requires_grad_(True)
        optimizer_step(d_opt, d_params, loss.discriminator_loss(x.dmain, real, x.dmain_real_patch, 0.0).loss, env)

    def phase_r1() -> None:
        optimizer_step(d_opt, d_params, loss.r1_loss(real, x.dreg_real_patch, 0.0, 16).loss, env)

    def ema() -> None:
        update_ema(G_ema, G, 0.999)

    cases = {
        "G forward, 64² patches, no grad": g_patch_forward,
        "G forward+backward, 64² patches": g_patch_backward,
        "G forward, full 256² image, no grad": g_full_forward,
        "D forward, no grad": d_forward,
        "D forward+backward": d_forward_backward,
        "phase G (G fwd+bwd through D, Adam)": phase_g,
        "phase D (fakes, D fake+real fwd/bwd, Adam)": phase_d,
        "phase R1 (double backward)": phase_r1,
        "EMA update": ema,
    }
    comparable = args.batch == 4 and args.preset == "ffhq256" and device.type == "cpu"  # the reference is a CPU
    rows = []
    for name, fn in cases.items():
        ours = timed(fn, args.repeats, device)
        rows.append({"case": name, "ours_s": ours, "original_s": ORIGINAL_B4.get(name) if comparable else None})
    phases = [r["ours_s"] for r in rows if r["case"].startswith(("phase", "EMA"))]
    rows.append({"case": "training iteration (G + D + R1 + EMA)", "ours_s": sum(phases),
                 "original_s": ORIGINAL_B4["training iteration (G + D + R1 + EMA)"] if comparable else None})
    for row in rows:
        row["speedup"] = row["original_s"] / row["ours_s"] if row["original_s"] else None

    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    env_info = {
        "device": device_name(device),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
        "preset": args.preset, "batch": b, "repeats": args.repeats, "malloc_tuning": tuned,
        "denormals_flushed": flushed and denormals_flushed(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"), "peak_rss_gib": round(peak_rss_gib, 2),
    }
    if device.type == "cuda":
        env_info["peak_cuda_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(f"{args.preset}, batch {b}, {env_info['device']} ({env_info['cpu_capability']}), "
          f"{env_info['torch_threads']} threads, torch {env_info['torch']}, malloc tuning {'on' if tuned else 'off'}")
    print(f"{'case':46s} {'ours (s)':>9s} {'original (s)':>13s} {'ratio':>7s}")
    for row in rows:
        orig = f"{row['original_s']:.2f}" if row["original_s"] else "–"
        sp = f"{row['speedup']:.2f}×" if row["speedup"] else "–"
        print(f"{row['case']:46s} {row['ours_s']:9.4f} {orig:>13s} {sp:>7s}")
    print(f"peak resident memory: {peak_rss_gib:.1f} GiB (original's training step at B=4 on CPU: 10.9 GiB)")
    if device.type == "cuda":
        print(f"peak CUDA memory allocated: {env_info['peak_cuda_allocated_gib']:.2f} GiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env_info, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
