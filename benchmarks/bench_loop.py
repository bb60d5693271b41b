"""Steady-state speed of the real training step: consecutive iterations on changing inputs.

    python benchmarks/bench_loop.py [--preset ffhq256] [--batch 4] [--iterations 6] [--warmup 1]
                                    [--r1-interval 1] [--keep-denormals] [--bf16]
                                    [--out benchmarks/results/loop.json]

Each iteration is ``epigraf.train.loop.training_step`` (G step, D step, R1 step on its interval, each an
Adam step) followed by ``update_ema``, exactly as ``train()`` runs them, on fresh inputs: new real
images (smooth random images, bilinearly up-sampled 16² noise), and per phase its own z, cameras and
patch parameters (``draw_iteration``, as ``train()`` draws them). Progress starts at kimg 0 (blur σ = 10,
patch scales ≈ 1, NeRF noise 1), as the reference measurement. ``--r1-interval 1`` (the default) runs R1
every iteration, with weight γ/2 per step instead of 16·γ/2 every 16th (the same on average), so every
iteration has every phase, as ``REFERENCE_TIMINGS.md`` counts it.

Prints per-iteration phase times and logits, then per-phase medians over the iterations after the
warm-up, the iteration time, img/s and the peak resident memory, beside the original's figures
(a different machine: see ``RESULTS.md`` for how to read the ratio). ``--keep-denormals`` leaves subnormal
floats on, to show the stall they cause once D saturates. ``--bf16`` runs the phases under bfloat16 autocast, as
``epigraf train --bf16`` does (oneDNN's bf16 kernels on CPUs with AVX-512 BF16 or AMX; tensor cores on GPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
from pathlib import Path

from epigraf.process_settings import denormals_flushed, flush_denormals, tune_cpu_allocator

PHASES = ("G", "D", "R1", "EMA", "iteration")
# REFERENCE_TIMINGS.md, batch 4, seconds: the phases of its table; the iteration with R1 every iteration, as here
# (its later pass: 62.7 s; the table's 56.5 s counts R1 every 16th iteration).
ORIGINAL_B4 = {"G": 38.4, "D": 13.3, "R1": 3.5, "iteration": 62.7}


def reset_peak_rss() -> bool:
    """Restarts the kernel's record of this process's peak resident size (VmHWM; Linux ≥ 4.0), so that each phase's
    own peak can be read. False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """This process's peak resident size since the last ``reset_peak_rss`` (or its start), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def with_phase_peaks(timed_phase):
    """``timed_phase`` that also records each phase's peak resident size as ``timings[name + "_rss_gib"]``. A phase
    restarts the kernel's record, so an enclosing phase takes the peaks of the phases inside it as well."""
    open_peaks: list[float] = []

    @contextlib.contextmanager
    def timed_phase_with_peak(timings, name, device):
        reset_peak_rss()
        open_peaks.append(0.0)
        try:
            with timed_phase(timings, name, device):
                yield
        finally:
            peak = max(open_peaks.pop(), peak_rss_gib())
            if open_peaks:
                open_peaks[-1] = max(open_peaks[-1], peak)
            reset_peak_rss()
        if timings is not None:
            timings[f"{name}_rss_gib"] = max(timings.get(f"{name}_rss_gib", 0.0), peak)

    return timed_phase_with_peak


def build(preset_name: str, batch: int, r1_interval: int, device):
    """The training step's pieces as ``train()`` builds them: (loss, G_opt, D_opt, env, G_ema, fresh_inputs), where
    ``fresh_inputs(step, kimg)`` draws a new iteration (smooth random reals, and per phase its own z, cameras and
    patches, as train() draws them). Also used by ``profile_loop.py``."""
    import torch
    import torch.nn.functional as F

    from epigraf.config import preset
    from epigraf.nn.discriminator import Discriminator
    from epigraf.nn.generator import Generator
    from epigraf.process_settings import configure_cuda_for_training
    from epigraf.train.augment import AugmentPipe
    from epigraf.train.distributed import DistEnv
    from epigraf.train.draws import IterationDraws, RealBatch, draw_iteration
    from epigraf.train.loss import PatchGANLoss
    from epigraf.train.step import make_optimizers

    if device.type == "cuda":
        configure_cuda_for_training()
    torch.manual_seed(0)
    cfg = preset(preset_name)
    G = Generator(cfg.generator).to(device).train()
    G_ema = Generator(cfg.generator).to(device).eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    D = Discriminator(cfg.discriminator).to(device).train()
    loss = PatchGANLoss(cfg, G, D, AugmentPipe().to(device), cfg.r1_gamma, 10.0, 200.0)
    G_opt, D_opt = make_optimizers(G, D, 0.0025, 0.002, r1_interval)
    env = DistEnv(0, 1, device)
    b, R, c_dim = batch, cfg.generator.image_resolution, cfg.generator.c_dim

    def fresh_inputs(step: int, kimg: float) -> IterationDraws:
        real = F.interpolate(torch.rand(b, 3, 16, 16, device=device) * 2 - 1, size=(R, R), mode="bilinear",
                             align_corners=True)

        def cameras(n: int) -> torch.Tensor:
            yaw, pitch = torch.randn(n, device=device) * 0.3, 1.5708 + torch.randn(n, device=device) * 0.15
            return torch.stack([yaw, pitch, torch.zeros_like(yaw)], dim=1)

        return draw_iteration(RealBatch(real, torch.zeros(b, c_dim, device=device), cameras(b)), cfg, kimg,
                              lambda n: (torch.zeros(n, c_dim, device=device), cameras(n)), spoof_p=1.0,
                              with_r1=step % r1_interval == 0)

    return loss, G_opt, D_opt, env, G_ema, fresh_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ffhq256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="first iterations left out of the medians")
    parser.add_argument("--r1-interval", type=int, default=1)
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush subnormal floats to zero")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default allocator settings")
    parser.add_argument("--compile", choices=("none", "G", "D", "both"), default="none",
                        help="torch.compile these networks (as `epigraf train --compile` does both)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast, as `epigraf train --bf16`")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loop.json"))
    args = parser.parse_args()
    if args.iterations <= args.warmup:
        parser.error(f"--iterations ({args.iterations}) must exceed --warmup ({args.warmup})")
    if args.r1_interval < 1:
        parser.error(f"--r1-interval must be ≥ 1, got {args.r1_interval}")
    # Before any torch operation: torch's worker threads copy the flag from the thread that starts them.
    flushed = False if args.keep_denormals else flush_denormals()
    tuned = False if args.no_malloc_tuning else tune_cpu_allocator()

    import torch
    from machine import device_name

    import epigraf.train.loop as loop
    from epigraf.schedules import ema_beta
    from epigraf.train.loop import training_step, update_ema

    loop.timed_phase = timed_phase = with_phase_peaks(loop.timed_phase)

    device = torch.device(args.device)
    loss, G_opt, D_opt, env, G_ema, fresh_inputs = build(args.preset, args.batch, args.r1_interval, device)
    if args.compile in ("G", "both"):
        loss.G.compile()
    if args.compile in ("D", "both"):
        loss.D.compile()
    b = args.batch
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    records = []
    cur_nimg = 0
    for step in range(args.iterations):
        timings: dict[str, float] = {}
        x = fresh_inputs(step, cur_nimg / 1000)
        with timed_phase(timings, "iteration", device):
            ok, stats, _ = training_step(loss, x, cur_nimg / 1000, step, G_opt, D_opt, env, args.r1_interval,
                                         autocast, timings)
            with timed_phase(timings, "EMA", device):
                update_ema(G_ema, loss.G, ema_beta(b, cur_nimg, b * 0.3125))
            cur_nimg += b
        records.append({"step": step, "finite": ok,
                        **{k if k.endswith("_rss_gib") else f"{k}_s": v for k, v in timings.items()},
                        "scores_fake": stats["scores/fake"], "scores_real": stats["scores/real"],
                        "rss_gib": max(v for k, v in timings.items() if k.endswith("_rss_gib"))})
        phases = " ".join(f"{k} {timings[k]:.2f} ({timings[k + '_cpu']:.1f} cpu, {timings[k + '_rss_gib']:.2f} GiB)"
                          for k in PHASES if k in timings)
        print(f"iteration {step}: {phases} s; D logits fake {stats['scores/fake']:+.2f} real "
              f"{stats['scores/real']:+.2f}; peak RSS {records[-1]['rss_gib']:.1f} GiB", flush=True)

    steady = records[args.warmup:]
    medians = {k: statistics.median(r[f"{k}_s"] for r in steady if f"{k}_s" in r)
               for k in [*PHASES, *(f"{p}_cpu" for p in PHASES)] if any(f"{k}_s" in r for r in steady)}
    first_d = records[0]["D_s"]
    peak_rss = max(r["rss_gib"] for r in records)
    phase_peaks = {k: max(r[f"{k}_rss_gib"] for r in records if f"{k}_rss_gib" in r)
                   for k in PHASES if any(f"{k}_rss_gib" in r for r in records)}
    comparable = (args.preset == "ffhq256" and b == 4 and device.type == "cpu" and args.r1_interval == 1
                  and not args.bf16)
    env_info = {
        "device": device_name(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(), "preset": args.preset, "batch": b, "iterations": args.iterations,
        "warmup": args.warmup, "r1_interval": args.r1_interval, "compile": args.compile, "bf16": args.bf16,
        "malloc_tuning": tuned,
        "denormals_flushed": flushed and denormals_flushed(), "load_average": os.getloadavg(),
        "peak_rss_gib": round(peak_rss, 2),
    }
    summary = {"medians_s": medians, "phase_peak_rss_gib": phase_peaks, "img_per_s": b / medians["iteration"],
               "d_phase_vs_first": [r["D_s"] / first_d for r in records[1:]],
               "d_phase_cpu_vs_first": [r["D_cpu_s"] / records[0]["D_cpu_s"] for r in records[1:]]}
    print(f"{args.preset}, batch {b}, {env_info['device']} ({env_info['cpu_capability']}), "
          f"{env_info['torch_threads']} threads, torch {env_info['torch']}, denormals "
          f"{'flushed' if env_info['denormals_flushed'] else 'kept'}, load average "
          f"{' '.join(f'{v:.1f}' for v in env_info['load_average'])}")
    print(f"medians over iterations {args.warmup}–{args.iterations - 1}: wall s (process CPU s, all threads)")
    for k in PHASES:
        if k not in medians:
            continue
        orig = ORIGINAL_B4.get(k) if comparable else None
        print(f"  {k:10s} {medians[k]:8.2f} ({medians[k + '_cpu']:7.2f})"
              + (f"   original {orig:.1f}, ratio {orig / medians[k]:.2f}×" if orig else ""))
    print(f"img/s {summary['img_per_s']:.3f}; D phase / first iteration's, wall: "
          f"{' '.join(f'{v:.2f}' for v in summary['d_phase_vs_first'])}, CPU: "
          f"{' '.join(f'{v:.2f}' for v in summary['d_phase_cpu_vs_first'])}; "
          f"peak RSS {peak_rss:.2f} GiB (original: 10.9 GiB at B=4); per phase "
          + ", ".join(f"{k} {v:.2f}" for k, v in phase_peaks.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env_info, "summary": summary, "iterations": records}, indent=2))


if __name__ == "__main__":
    main()
