"""Rank 0's record of a run: the run folder, options.json and config.json, stats.jsonl and the metric logs
(trimmed on resume to the snapshot resumed from), TensorBoard, the progress bar, and the grids and videos of
fakes."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epigraf.cameras import sample_spherical_uniform
from epigraf.config import ModelConfig
from epigraf.data.dataset import ImageDataset
from epigraf.files import atomic_write, strict_json
from epigraf.metrics import FeatureExtractor, InceptionFeatures, MetricResult, TorchScriptFeatures
from epigraf.nn.generator import Generator
from epigraf.progress import bar_can_draw, kimg_bar_format
from epigraf.train import distributed
from epigraf.train.options import TrainOptions
from epigraf.train.run_snapshots import prepare_run_dir
from epigraf.train.visualize import FakesSchedule, render_fake_grid, save_camera_path_video, save_image_grid

log = logging.getLogger(__name__)

VIDEO_LATENTS = 4


def fid_feature_extractor(opts: TrainOptions, device: torch.device) -> FeatureExtractor | None:
    """The detector for FID@2k during training, or None (logged once) when no Inception weights are found."""
    if opts.detector is not None:
        return TorchScriptFeatures(opts.detector, device)
    try:
        return InceptionFeatures(opts.inception, device)
    except (FileNotFoundError, ValueError) as err:
        log.warning("FID@2k during training is off: %s", err)
        return None


def create_run_dir(opts: TrainOptions, name: str) -> Path:
    if opts.run is not None:
        run = Path(opts.run)
        prepare_run_dir(run, opts.force)
        return run
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = [int(p.name.split("-")[0]) for p in out.iterdir() if p.is_dir() and p.name.split("-")[0].isdigit()]
    run = out / f"{max(ids, default=-1) + 1:05d}-{name}"
    run.mkdir()
    return run


def drop_records_after(log_file: Path, nimg: int) -> None:
    """Keep only the JSON-lines records of ``log_file`` at ``kimg`` ≤ nimg / 1000 (resuming from a snapshot at
    nimg images repeats what a stopped run logged after it) and drop a line a kill cut short. Rewritten
    atomically; an absent file is left alone."""
    if not log_file.is_file():
        return
    lines = log_file.read_text().splitlines(keepends=True)
    kept = [line for line in lines if (record_nimg := _record_nimg(line)) is not None and record_nimg <= nimg]
    if len(kept) != len(lines):
        with atomic_write(log_file) as tmp:
            tmp.write_text("".join(kept))


def _record_nimg(line: str) -> int | None:
    try:
        return round(json.loads(line)["kimg"] * 1000)
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


# Options that say how to continue (not what is trained): changing them on resume needs no warning.
RESUME_CONTROLS = frozenset({"resume", "kimg", "run", "out", "force", "device", "workers", "progress",
                             "tensorboard", "image_ticks", "metrics_ticks", "snapshot_ticks", "videos"})


def warn_about_changed_options(original: dict[str, Any], resumed: dict[str, Any]) -> list[str]:
    """Log one warning naming each training option the resume changes (e.g. ``batch_size 4 → 8``); returns
    those descriptions."""
    changed = [f"{name} {original[name]!r} → {value!r}" for name, value in resumed.items()
               if name not in RESUME_CONTROLS and name in original and original[name] != value]
    if changed:
        log.warning("resuming with options that differ from the run's own (options.json): %s; the continued "
                    "run is not the one started", ", ".join(changed))
    return changed


class RunLogger:
    """Rank 0's view of the run: progress bar, stats.jsonl, optional TensorBoard, image grids."""

    def __init__(self, run_dir: Path, opts: TrainOptions, cfg: ModelConfig, env: distributed.DistEnv,
                 start_nimg: int) -> None:
        self.run_dir, self.opts = run_dir, opts
        if start_nimg > 0:
            for log_file in (run_dir / "stats.jsonl", *run_dir.glob("metric-*.jsonl")):
                drop_records_after(log_file, start_nimg)
        options = dataclasses.asdict(opts)
        options_file = run_dir / "options.json"
        if start_nimg > 0 and options_file.is_file():
            warn_about_changed_options(json.loads(options_file.read_text()), options)
            # options.json stays the run's original record; each resume's options go beside it.
            options_file = run_dir / f"options-resumed-{start_nimg:010d}.json"
        options_file.write_text(json.dumps(options, indent=2))
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        self.stats_file = (run_dir / "stats.jsonl").open("a")
        self.writer = None
        if opts.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError("--tensorboard needs the tensorboard package (pip install tensorboard)") from err
            # A resumed run repeats the steps after its snapshot: TensorBoard drops the stopped run's copies.
            self.writer = SummaryWriter(str(run_dir), purge_step=start_nimg + 1 if start_nimg > 0 else None)
        self.bar = None
        # Where the bar cannot draw (a terminal of zero columns shows nothing), a log line per tick instead.
        if opts.progress and bar_can_draw():
            from tqdm import tqdm

            self.bar = tqdm(total=opts.kimg, initial=start_nimg / 1000, unit="kimg", dynamic_ncols=True,
                            bar_format=kimg_bar_format(opts.kimg))
        self.fakes_schedule = FakesSchedule(opts.image_ticks, opts.image_minutes, start=time.time())
        self.grid_z: Tensor | None = None
        self.grid_idx: np.ndarray | None = None
        log.info("run folder: %s (%s on %s, %d process(es))", run_dir, cfg.name, env.device, env.world_size)

    def progress(self, cur_nimg: int, last: dict[str, float], augment_p: float) -> None:
        if self.bar is None:
            return
        self.bar.n = cur_nimg / 1000
        self.bar.set_postfix({"G": f"{last.get('loss/G', math.nan):.3f}", "D": f"{last.get('loss/D', math.nan):.3f}",
                              "p": f"{augment_p:.3f}"}, refresh=True)

    def tick(self, tick: int, cur_nimg: int, step: int, seconds: float, tick_nimg: int,
             stats: dict[str, list[float]], extra: dict[str, float]) -> None:
        record: dict[str, Any] = {"tick": tick, "kimg": cur_nimg / 1000, "step": step,
                                  "sec_per_kimg": seconds / max(tick_nimg / 1000, 1e-9),
                                  "img_per_sec": tick_nimg / max(seconds, 1e-9), "timestamp": time.time()}
        record.update({k: float(np.mean(v)) for k, v in stats.items() if v})
        record.update(extra)
        if torch.cuda.is_available():
            record["resources/peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        # A skipped step's NaN loss is written as null: stats.jsonl is strict JSON.
        self.stats_file.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
        self.stats_file.flush()
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("tick", "timestamp"):
                    self.writer.add_scalar(k, v, global_step=cur_nimg)
        if self.bar is not None:
            self.bar.set_description(
                f"tick {tick} {record['sec_per_kimg']:.1f} s/kimg {record['img_per_sec']:.1f} img/s")
        else:
            log.info("tick %d: %g/%g kimg, %.1f s/kimg, %.1f img/s, %s", tick, cur_nimg / 1000, self.opts.kimg,
                     record["sec_per_kimg"], record["img_per_sec"],
                     " ".join(f"{k}={v:.4g}" for k, v in record.items() if k.startswith("loss/")))

    def metric(self, result: MetricResult, cur_nimg: int) -> None:
        """Append one metric to ``metric-<name>.jsonl`` and log it."""
        record = {"kimg": cur_nimg / 1000, **result.to_dict()}
        with (self.run_dir / f"metric-{result.metric}.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            self.writer.add_scalar(f"metrics/{result.metric}", result.value, global_step=cur_nimg)
        log.info("%s at %.1f kimg: %.4g", result.metric, cur_nimg / 1000, result.value)

    def save_reals(self, dataset: ImageDataset, count: int = 16) -> None:
        rng = np.random.RandomState(self.opts.seed)
        self.grid_idx = rng.randint(len(dataset), size=count)
        images = torch.from_numpy(np.stack([dataset[int(i)].image for i in self.grid_idx])).float() / 127.5 - 1
        save_image_grid(images, self.run_dir / "reals.png")

    def save_fakes(self, G_ema: Generator, dataset: ImageDataset, cfg: ModelConfig, cur_nimg: int, *,
                   video: bool) -> None:
        """A grid of G_ema renders at the cameras and labels of the real grid, and (with ``video`` and
        ``--videos``) a camera-path video."""
        if self.grid_idx is None:
            self.grid_idx = np.random.RandomState(self.opts.seed).randint(len(dataset), size=16)
        n = len(self.grid_idx)
        z = torch.from_numpy(np.random.RandomState(self.opts.seed + 1).randn(n, cfg.generator.z_dim)).float()
        c = torch.from_numpy(dataset.labels[self.grid_idx][:, : cfg.generator.c_dim]) if cfg.generator.c_dim else None
        angles = torch.from_numpy(dataset.camera_angles[self.grid_idx])
        if not torch.isfinite(angles).all():
            angles = sample_spherical_uniform(n, torch.Generator().manual_seed(self.opts.seed))
        save_image_grid(render_fake_grid(G_ema, z, c, angles), self.run_dir / f"fakes-{cur_nimg:010d}.png")
        self.fakes_schedule.last = time.time()
        if video and self.opts.videos:
            save_camera_path_video(G_ema, z[:VIDEO_LATENTS], None if c is None else c[:VIDEO_LATENTS],
                                   self.run_dir / f"video-{cur_nimg:010d}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.stats_file.close()
