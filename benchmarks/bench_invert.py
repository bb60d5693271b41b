"""Seconds per inversion (``epigraf invert``) at 128² and 256², from measured per-step times.

    python benchmarks/bench_invert.py [--preset ffhq256] [--resolutions 128 256] [--repeats 2] [--device cpu]
                                      [--out benchmarks/results/invert.json]

A full inversion at the defaults (inversion.py: multi-start searches of 20 steps at 32² over 21 views × 4
starting latents, the best 4 refined for 50 steps at full size, 300 final steps; optional pivotal tuning) takes
hours at 256² on a 2-core CPU, so each phase is timed for ``--repeats`` steps after one warm-up step, and the
seconds per inversion, with a given and with an estimated camera, are projected as steps × median step time.
The generator is the preset's architecture with random weights: speed does not depend on the weights. No
perceptual loss unless ``--perceptual`` (it adds Inception-v3's first blocks per step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from machine import device_name

from epigraf.config import preset
from epigraf.invert import InversionConfig, find_perceptual
from epigraf.invert.camera_search import candidate_angles
from epigraf.invert.latent_fit import LatentFit
from epigraf.invert.pivotal import pivotal_tune
from epigraf.nn.generator import Generator


def timed(fn, repeats: int, device: str) -> float:
    """Median wall seconds of fn() over ``repeats`` runs after one warm-up run."""
    def once() -> float:
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start
    once()
    return statistics.median(once() for _ in range(repeats))


def bench(G: Generator, resolution: int, config: InversionConfig, perceptual, repeats: int, device: str) -> dict:
    target = torch.rand(1, 3, resolution, resolution, device=device) * 2 - 1
    fit = LatentFit(G, target, config, perceptual)
    angles = G.cameras(torch.tensor([[0.0, 1.5708, 0.0]])).angles.to(device)
    views = candidate_angles(G.cfg.camera, config.search_yaws, config.search_pitches, config.search_span)
    search_res = min(config.search_resolution, resolution)
    batch = min(config.search_batch, len(views) * config.search_latents)
    chunk = views[:1].repeat(batch, 1).to(device)
    step = timed(lambda: fit.run(fit.initial_w(1), angles, 1, True, resolution), repeats, device)
    # One batch of (view, latent) pairs, divided per pair: the search runs its batches one after another.
    search_pair = timed(lambda: fit.run(fit.initial_w(batch), chunk, 1, False, search_res, full_loss=False),
                        repeats, device) / batch
    candidates = angles.repeat(config.refine_candidates, 1)
    refine = timed(lambda: fit.run(fit.initial_w(len(candidates)), candidates, 1, True, resolution,
                                   full_loss=False), repeats, device)
    ws = fit.expand(fit.initial_w(1))
    one_step = InversionConfig(pti_steps=1, seed=config.seed)
    # Includes pivotal_tune's one copy of G, paid once per inversion, not per step: an upper bound per step.
    pti = timed(lambda: pivotal_tune(G, ws, angles, target, resolution, one_step, perceptual), repeats, device)
    # inversion.py's schedule: a given camera gets one multi-start (search_latents pairs at that view, the best
    # refined), then the final fit; an estimated one first searches every view of the grid, then a second
    # multi-start at the view it found.
    given = (config.search_steps * config.search_latents * search_pair + config.refine_steps * refine
             + config.steps * step)
    estimated = given + config.search_steps * len(views) * config.search_latents * search_pair \
        + config.refine_steps * refine
    return {"resolution": resolution, "step_s": step, "search_pair_step_s": search_pair, "refine_step_s": refine,
            "pti_step_s": pti, "inversion_given_camera_s": given, "inversion_s": estimated,
            "inversion_with_pti_100_s": estimated + 100 * pti}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ffhq256")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--perceptual", action="store_true")
    parser.add_argument("--search-batch", type=int, default=InversionConfig.search_batch,
                        help="camera-search candidates per batch (memory: ffhq256 at 7 needs ~13 GB)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 on a shared machine where threads wait for cores")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/invert.json"))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    G = Generator(preset(args.preset).generator).to(args.device).eval()
    config = InversionConfig(search_batch=args.search_batch)
    perceptual = find_perceptual(None, args.device) if args.perceptual else None
    rows = []
    for resolution in args.resolutions:
        rows.append(bench(G, resolution, config, perceptual, args.repeats, args.device))
        r = rows[-1]
        print(f"{args.preset} {resolution}²: step {r['step_s']:.2f} s, search step per pair "
              f"{r['search_pair_step_s']:.3f} s, refine step {r['refine_step_s']:.2f} s, PTI step "
              f"{r['pti_step_s']:.2f} s", flush=True)
    print(f"\n{'resolution':>10} {'s/step':>8} {'given cam':>10} {'estimated':>10} {'+100 PTI':>10}   (projected)")
    for r in rows:
        print(f"{r['resolution']:>9}² {r['step_s']:>8.2f} {r['inversion_given_camera_s']:>10.0f} "
              f"{r['inversion_s']:>10.0f} {r['inversion_with_pti_100_s']:>10.0f}")
    result = {"benchmark": "invert", "preset": args.preset, "device": device_name(args.device),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
              "perceptual": perceptual is not None, "config": dataclasses.asdict(config), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
