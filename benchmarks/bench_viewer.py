"""Viewer frame time per resolution: one orbiting latent, tri-planes cached, through the real HTTP server.

    python benchmarks/bench_viewer.py [--presets ffhq256 builtin] [--resolutions 32 64 128] [--steps 1 2]
                                      [--repeats 2] [--device cpu] [--out benchmarks/results/viewer.json]

For each preset (randomly initialised generator, torch seed 0; untrained weights cost the same as trained ones)
the viewer's server runs in a thread; each row is the median over ``--repeats`` GET /api/frame round trips (PNG)
after the latent's tri-planes are cached: ``render`` is the server's render time (X-Render-Ms), ``frame`` the
whole round trip (render + PNG encoding + HTTP), fps = 1000 / frame. ``new latent`` is the first frame of a
seed, which also maps z and synthesises the tri-planes. Prints a table and writes JSON with the environment
(device, threads, load average: CPU numbers depend on what else runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import urllib.request
from pathlib import Path

import torch
from machine import device_name

from epigraf.config import preset
from epigraf.nn.generator import Generator
from epigraf.viewer import Renderer, ViewerServer


def get(url: str) -> tuple[float, float]:
    """→ (round trip ms, server render ms) of one frame request."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=3600) as r:
        r.read()
        render_ms = float(r.headers["X-Render-Ms"])
    return (time.perf_counter() - t0) * 1000, render_ms


def bench_preset(name: str, device: torch.device, resolutions: list[int], steps: list[int],
                 repeats: int) -> dict:
    torch.manual_seed(0)
    G = Generator(preset(name).generator).to(device).eval()
    server = ViewerServer(Renderer(G, max_resolution=max(resolutions)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"{server.url}api/frame?seed=0"
        new_latent_ms, _ = get(f"{base}&res={min(resolutions)}&steps=1")
        rows = []
        for res in resolutions:
            for k in steps:
                url = f"{base}&res={res}&steps={k}&yaw=0.3"
                times = [get(url) for _ in range(repeats)]
                frame_ms = statistics.median(t for t, _ in times)
                rows.append({"resolution": res, "ray_step_multiplier": k,
                             "samples_per_ray": 2 * k * G.cfg.render.num_ray_steps,
                             "render_ms": statistics.median(r for _, r in times), "frame_ms": frame_ms,
                             "fps": 1000 / frame_ms})
    finally:
        server.shutdown()
        server.server_close()
    return {"preset": name, "image_resolution": G.cfg.image_resolution, "new_latent_ms": new_latent_ms,
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["ffhq256", "builtin"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2], help="ray-step multipliers")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/viewer.json"))
    args = parser.parse_args()

    device = torch.device(args.device)
    env = {
        "device": device_name(device),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "repeats": args.repeats,
        "load_average_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    runs = [bench_preset(p, device, args.resolutions, args.steps, args.repeats) for p in args.presets]
    env["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    print(f"{env['device']}, {env['torch_threads']} threads, torch {env['torch']}, "
          f"load average {env['load_average_before']} → {env['load_average_after']}")
    print(f"{'preset':9s} {'res':>5s} {'steps×':>6s} {'samples':>7s} {'render ms':>10s} {'frame ms':>9s} {'fps':>7s}")
    for run in runs:
        for row in run["rows"]:
            print(f"{run['preset']:9s} {row['resolution']:5d} {row['ray_step_multiplier']:6d} "
                  f"{row['samples_per_ray']:7d} {row['render_ms']:10.1f} {row['frame_ms']:9.1f} {row['fps']:7.2f}")
        print(f"{run['preset']:9s} new latent (mapping + tri-planes + a {min(args.resolutions)}² frame): "
              f"{run['new_latent_ms']:.0f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "results": runs}, indent=2))


if __name__ == "__main__":
    main()
