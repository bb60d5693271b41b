"""The capacity diagnostic of issue 25: the built-in generator and renderer fitted directly to one toy's views,
or to several toys at once with a class-conditional generator (the built-in run's).

    python benchmarks/fit_one_object.py --object mug --minutes 8 [--mode generator|planes] [--evals 3]
                                        [--batch-size 4] [--lr LR] [--distortion-weight W]
                                        [--set generator.triplane_resolution=128 ...]
                                        [--tag NAME] [--threads N] [--out JSON]

    python benchmarks/fit_one_object.py --object all --minutes 30 --batch-size 8   # the twelve toys

The JSON goes to ``benchmarks/results/fit_<object>_<mode>[-<tag>].json`` unless ``--out`` is given.

No discriminator: an unconditional ``builtin`` generator with one fixed latent (seed 0, constant noise) is
trained with Adam on the L2 error of its colours plus the L2 error of its opacity against the true coverage, on
random 32² patches (scale uniform in [½, 1], like the training's patches) of random views of the toy, with the
training's stochastic ray sampling and no density noise. ``--mode generator`` (default) trains the whole
generator (mapping, tri-plane synthesis, field MLP) with the GAN recipe's G settings (lr 0.0025, β = (0, 0.99),
the equalised-lr multipliers of its layers): the ceiling of what the GAN can reach with this generator and
renderer. ``--mode planes`` optimises the tri-planes themselves (initialised to the generator's output) and the
field MLP (lr 0.01 by default): the ceiling of the representation, tri-planes + MLP + renderer, without the
synthesis network. If either is a blob, the GAN cannot do better.

With several objects (``--object`` repeated, or ``all`` for every toy) the generator is class-conditional on
them, as the built-in run's is (class i = the i-th object named), and each step draws its views from every
object: one latent per class (seed 0), each view's scene synthesized from its class's w. That is the ceiling of
the built-in run's generator, which holds the twelve toys in one synthesis network. Generator mode only.

At step 0 and ``--evals`` times spread over the training budget (their time not counted in it), it measures,
per toy, the standard geometry protocol (``epigraf.metrics.geometry``: the first 8 views of the toy at the
dataset's cameras, ray steps × 2, mesh at the automatic iso-level on a 128³ grid) plus the PSNR of the same 8 renders
against the real images (views the fit trains on: this is a fit, not a generalisation test). Prints a table,
writes JSON. ``--set`` overrides a field of the preset's ``ModelConfig`` by its dotted path (a probe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from machine import device_name, write_result
from PIL import Image

from epigraf.config import ModelConfig, PatchConfig, preset
from epigraf.data.builtin import TOYS, build_builtin_dataset, load_geometry
from epigraf.metrics.builtin_truth import load_builtin_truth
from epigraf.metrics.geometry import GeneratorModel, GeometryProtocol, depth_scores, mesh_scores, render_views
from epigraf.nn.field import split_planes
from epigraf.nn.generator import Generator
from epigraf.patches import extract_patches, sample_patch_params
from epigraf.seeds import one_hot, seeds_to_z

RESULTS = Path(__file__).resolve().parent / "results"


def override(cfg, path: str, text: str):
    """A copy of the (nested) dataclass ``cfg`` with the field at dotted ``path`` set to ``text`` parsed as
    its current value's type."""
    head, _, rest = path.partition(".")
    if not dataclasses.is_dataclass(cfg) or head not in {f.name for f in dataclasses.fields(cfg)}:
        raise ValueError(f"--set: no field {head!r} in {type(cfg).__name__}")
    current = getattr(cfg, head)
    if rest:
        return dataclasses.replace(cfg, **{head: override(current, rest, text)})
    if isinstance(current, bool):
        value = text.lower() in ("1", "true", "yes")
    elif current is None:
        value = None if text == "None" else text
    else:
        value = type(current)(text)
    return dataclasses.replace(cfg, **{head: value})


def model_config(sets: list[str], c_dim: int) -> ModelConfig:
    cfg = preset("builtin")
    for item in sets:
        path, _, text = item.partition("=")
        cfg = override(cfg, path, text)
    return dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, c_dim=c_dim))


def load_views(root: Path, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every view of one object: images [N, 3, R, R] in [−1, 1], coverage [N, 1, R, R], angles [N, 3]."""
    meta = json.loads((root / "dataset.json").read_text())
    keys = sorted(k for k in meta["camera_angles"] if k.split("/")[1] == name)
    images = np.stack([np.asarray(Image.open(root / f"{k}.png").convert("RGB")) for k in keys])
    masks = np.stack([load_geometry(root, k)[1] for k in keys])
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
            torch.from_numpy(masks)[:, None], torch.tensor([meta["camera_angles"][k] for k in keys]))


def class_latents(G: Generator, labels: torch.Tensor | None) -> torch.Tensor:
    """The fitted latent (seed 0's z) of each view's class → ws [B, num_ws, w_dim] (one scene when unconditional)."""
    z = seeds_to_z([0], G.z_dim)
    if labels is None:
        return G.mapping(z, None)
    return G.mapping(z.expand(len(labels), -1), one_hot(labels.tolist(), G.c_dim))


def evaluate(G: Generator, planes: torch.Tensor | None, truth, reals: torch.Tensor,
             protocol: GeometryProtocol) -> dict[str, float]:
    """One toy's geometry scores and the PSNR (dB, colours in [0, 1]) of the protocol's 8 renders."""
    model = GeneratorModel(G, protocol.truncation_psi) if planes is None else PlanesModel(G, planes)
    seeds = [0] * len(truth.keys)  # one scene: the fitted latent (seed 0) or planes
    image, depth_sum, opacity = render_views(model, truth.label, seeds, truth.cameras, truth.depth.shape[-1],
                                             protocol)
    cam = G.cfg.camera
    scores = depth_scores(depth_sum, opacity, truth.depth, truth.mask, cam.ray_start, cam.ray_end, protocol)
    mse = float((((image.clamp(-1, 1) - reals) / 2) ** 2).mean())
    scores["psnr"] = -10 * math.log10(max(mse, 1e-10))
    scores.update(mesh_scores(model, truth, protocol))
    return scores


def summarize(per_object: dict[str, dict[str, float]]) -> dict[str, float]:
    """The GAN run's summary of several toys (``metric-geometry.jsonl``): mean and lowest silhouette IoU, how
    many reach 0.8, median depth error and median F@2 %; the mean of every other score."""
    iou = [s["silhouette_iou"] for s in per_object.values()]
    keys = per_object[next(iter(per_object))].keys()
    out = {k: float(np.mean([s[k] for s in per_object.values()])) for k in keys}
    out.update(min_silhouette_iou=float(min(iou)), classes_iou_at_least_0_8=sum(v >= 0.8 for v in iou),
               median_depth_error=float(np.median([s["depth_error"] for s in per_object.values()])),
               median_fscore_2=float(np.median([s["fscore_2"] for s in per_object.values()])))
    return out


class PlanesModel:
    """The geometry metric's model for fitted tri-planes [1, C, R, R]: every seed sees the same scene."""

    def __init__(self, G: Generator, planes: torch.Tensor) -> None:
        self.G, self.planes = G, planes
        self.camera, self.render, self.device = G.cfg.camera, G.cfg.render, planes.device

    @torch.no_grad()
    def scenes(self, label, seeds):
        feats = split_planes(self.planes.detach().expand(len(seeds), -1, -1, -1), self.G.cfg.triplane_channels)
        return lambda points: self.G.field(feats, points)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--object", nargs="+", default=["mug"], choices=(*TOYS, "all"),
                   help="one toy, or several (or all) for a class-conditional fit")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall time (evaluations not counted)")
    p.add_argument("--evals", type=int, default=3, help="evaluations spread over the training (plus step 0)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--mode", choices=("generator", "planes"), default="generator")
    p.add_argument("--lr", type=float, default=None, help="default 0.0025 (generator) or 0.01 (planes)")
    p.add_argument("--mask-weight", type=float, default=1.0)
    p.add_argument("--distortion-weight", type=float, default=0.0,
                   help="weight of the weights' distortion (Mip-NeRF 360's loss) in the fit's loss")
    p.add_argument("--views", type=int, default=256, help="views of each toy rendered for the fit")
    p.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE", help="ModelConfig overrides (a probe)")
    p.add_argument("--tag", default="", help="suffix of the default output name")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    objects = list(TOYS) if "all" in args.object else list(dict.fromkeys(args.object))
    conditional = len(objects) > 1
    if conditional and args.mode == "planes":
        p.error("--mode planes fits one toy's tri-planes; several toys need --mode generator")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cfg = model_config(args.set, len(objects) if conditional else 0)
    res = cfg.generator.image_resolution
    root = build_builtin_dataset(resolution=res, subset="toys", num_objects=max(map(TOYS.index, objects)) + 1,
                                 views_per_object=args.views, progress=True)
    protocol = GeometryProtocol()
    truths = load_builtin_truth(root, protocol.views_per_class, [TOYS.index(o) for o in objects])
    truths = [dataclasses.replace(t, label=i if conditional else None) for i, t in enumerate(truths)]
    views = [load_views(root, o) for o in objects]
    images, masks, angles = (torch.cat(parts) for parts in zip(*views, strict=True))
    labels = torch.cat([torch.full((len(v[0]),), i) for i, v in enumerate(views)])
    eval_reals = [v[0][: protocol.views_per_class] for v in views]

    G = Generator(cfg.generator).train()
    planes = None
    if args.mode == "planes":
        with torch.no_grad():
            planes = torch.nn.Parameter(G.synthesize(class_latents(G, None), noise_mode="const"))
        params = [planes, *G.field.parameters()]
    else:
        params = list(G.parameters())
    args.lr = args.lr if args.lr is not None else (0.0025 if args.mode == "generator" else 0.01)
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
    patch_cfg = dataclasses.replace(cfg.patch, distribution="uniform", group_size=1)
    assert isinstance(patch_cfg, PatchConfig)
    gen = torch.Generator().manual_seed(args.seed)

    rows: list[dict] = []
    train_seconds, step, started = 0.0, 0, time.time()

    def record() -> None:
        t0 = time.perf_counter()
        G.eval()
        per_object = {o: evaluate(G, planes, t, r, protocol)
                      for o, t, r in zip(objects, truths, eval_reals, strict=True)}
        G.train()
        row = {"step": step, "train_seconds": round(train_seconds, 1),
               **(summarize(per_object) if conditional else per_object[objects[0]]),
               "eval_seconds": time.perf_counter() - t0}
        if conditional:
            row["per_object"] = per_object
        rows.append(row)
        print(f"step {step:5d}  train {train_seconds / 60:5.1f} min  PSNR {row['psnr']:5.2f} dB  depth err "
              f"{row['depth_error']:.4f}  sil. IoU {row['silhouette_iou']:.3f}  F@2% {row['fscore_2']:.3f}  "
              f"vol. IoU {row['volume_iou']:.3f}  (eval {row['eval_seconds']:.0f} s)", flush=True)

    record()
    budget = args.minutes * 60
    marks = [budget * (i + 1) / args.evals for i in range(args.evals)]
    losses = []
    while marks:
        t0 = time.perf_counter()
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        pp = sample_patch_params(args.batch_size, patch_cfg, patch_cfg.anneal_kimg, generator=gen)  # [½, 1]
        real = extract_patches(images[idx], pp, cfg.patch.resolution)
        mask = extract_patches(masks[idx], pp, cfg.patch.resolution)
        if planes is not None:
            scene = planes.expand(args.batch_size, -1, -1, -1)
        elif conditional:
            scene = G.synthesize(class_latents(G, labels[idx]), noise_mode="const")
        else:  # one scene: its tri-planes computed once per step and rendered from every view of the batch
            scene = G.synthesize(class_latents(G, None), noise_mode="const").expand(args.batch_size, -1, -1, -1)
        out = G.render(scene, G.cameras(angles[idx]), patch_params=pp, with_distortion=args.distortion_weight > 0)
        loss = ((out.image - real) ** 2).mean() + args.mask_weight * ((out.opacity - mask) ** 2).mean()
        if args.distortion_weight > 0:
            loss = loss + args.distortion_weight * out.distortion.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        train_seconds += time.perf_counter() - t0
        if train_seconds >= marks[0]:
            marks.pop(0)
            record()
            rows[-1]["loss"] = float(np.mean(losses[-50:]))

    load = os.getloadavg()
    name = "all" if objects == list(TOYS) else "+".join(objects)
    result = {
        "object": name, "mode": args.mode, "device": device_name("cpu"), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_average_at_end": [round(x, 2) for x in load],
        "wall_seconds": round(time.time() - started, 1), "set": args.set, "batch_size": args.batch_size,
        "lr": args.lr, "mask_weight": args.mask_weight,
        "distortion_weight": args.distortion_weight, "views": len(images), "protocol": protocol.describe(),
        "steps_per_second": step / max(train_seconds, 1e-9), "rows": rows,
    }
    print()
    print("| step | train min | PSNR (dB) | depth err | (hits) | bias (hits) | sil. IoU | Chamfer | F@1% | F@2% "
          "| vol. IoU |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['train_seconds'] / 60:.1f} | {r['psnr']:.2f} | {r['depth_error']:.4f} | "
              f"{r['depth_error_hits']:.4f} | {r['depth_bias_hits']:+.4f} | {r['silhouette_iou']:.3f} | "
              f"{r['chamfer']:.4f} | {r['fscore_1']:.3f} | {r['fscore_2']:.3f} | {r['volume_iou']:.3f} |")
    if conditional:
        print("\nmeans over the toys above; the GAN run's summary (lowest IoU, ≥ 0.8, medians):")
        for r in rows:
            print(f"step {r['step']}: mean IoU {r['silhouette_iou']:.3f}, lowest {r['min_silhouette_iou']:.3f}, "
                  f"≥ 0.8 {r['classes_iou_at_least_0_8']}/{len(objects)}, median depth error "
                  f"{r['median_depth_error']:.4f}, median F@2 % {r['median_fscore_2']:.3f}")
        print("\n| toy | PSNR | depth err | sil. IoU | F@2% | vol. IoU |  (last evaluation)")
        for o, sc in rows[-1]["per_object"].items():
            print(f"| {o} | {sc['psnr']:.2f} | {sc['depth_error']:.4f} | {sc['silhouette_iou']:.3f} | "
                  f"{sc['fscore_2']:.3f} | {sc['volume_iou']:.3f} |")
    print(f"{result['device']}, {result['threads']} threads, load average at the end {result['load_average_at_end']}, "
          f"{step} steps at {result['steps_per_second']:.2f} steps/s, wall {result['wall_seconds'] / 60:.1f} min")
    out = args.out or RESULTS / f"fit_{name}_{args.mode}{'-' + args.tag if args.tag else ''}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
