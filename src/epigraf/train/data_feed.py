"""What the training loop eats: the dataset and the model config it implies, the real batches of each step,
and the labels and cameras of each step's fakes.

Randomness is a pure function of (seed, rank, step): batch k's data indices come from a generator seeded by
``step_seed(seed, rank, k, stream=1)``, so resuming from a snapshot replays the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from epigraf.cameras import sample_normal, sample_spherical_uniform
from epigraf.config import ModelConfig
from epigraf.data.dataset import ImageDataset
from epigraf.train import distributed
from epigraf.train.options import TrainOptions, label_dim

log = logging.getLogger(__name__)


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A distinct 63-bit seed per (seed, rank, step, stream)."""
    return int(np.random.SeedSequence([seed, rank, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))



def resolve_dataset(opts: TrainOptions, resolution: int, env: distributed.DistEnv) -> ImageDataset:
    """The user's dataset, or the built-in one (rendered once into the cache by rank 0 while others wait)."""
    if opts.data is not None:
        return ImageDataset(opts.data, mirror=opts.mirror, coverage=opts.d_alpha)
    from epigraf.data.builtin import build_builtin_dataset

    if env.is_main:
        log.info("preparing the built-in dataset at %d² (rendered once, then cached)", resolution)
        path = build_builtin_dataset(resolution=resolution, progress=opts.progress)
    distributed.barrier(env)
    if not env.is_main:
        path = build_builtin_dataset(resolution=resolution)
    return ImageDataset(path, mirror=opts.mirror, coverage=opts.d_alpha)


def model_config_for(opts: TrainOptions, dataset: ImageDataset, base: ModelConfig) -> ModelConfig:
    """``base`` (the preset), adapted to the dataset (labels, mean pose) and the options (pose conditioning)."""
    cfg = base
    g, d = cfg.generator, cfg.discriminator
    if dataset.resolution != g.image_resolution:
        raise ValueError(f"dataset images are {dataset.resolution}² but the model ({cfg.name!r}) trains at "
                         f"{g.image_resolution}²; convert with `epigraf dataset convert --resolution "
                         f"{g.image_resolution}`")
    c_dim = label_dim(opts.preset, g.c_dim, dataset.c_dim, opts.use_labels)
    if g.camera.distribution == "custom" and not dataset.has_cameras:
        raise ValueError(f"preset {opts.preset!r} renders from the dataset's poses, but the dataset has no "
                         "camera_angles in dataset.json")
    d_camera_cond = bool(opts.d_camera_cond or opts.pose_cond)
    if opts.pose_cond and not dataset.has_cameras:
        raise ValueError("--pose-cond conditions G and D on the camera, but the dataset has no camera_angles in "
                         "dataset.json")
    if d_camera_cond and not dataset.has_cameras:
        raise ValueError("D is camera-conditioned (--d-camera-cond, the builtin preset's default), but the dataset "
                         "has no camera_angles in dataset.json; train without it: --no-d-camera-cond")
    mean_pose = dataset.mean_camera_pose or g.mean_camera_pose
    g = dataclasses.replace(g, c_dim=c_dim, camera_cond=opts.g_camera_cond or opts.pose_cond,
                            mean_camera_pose=tuple(mean_pose))
    d = dataclasses.replace(d, c_dim=c_dim, camera_cond=d_camera_cond, camera_cond_drop_p=opts.d_camera_cond_drop_p,
                            img_channels=4 if opts.d_alpha else 3)
    gamma = opts.r1_gamma if opts.r1_gamma >= 0 else cfg.r1_gamma
    return dataclasses.replace(cfg, generator=g, discriminator=d, r1_gamma=gamma)


class RealBatches(torch.utils.data.Sampler):
    """Index batches for steps start, start+1, …: batch k is drawn from a generator seeded by (seed, rank, k)."""

    def __init__(self, dataset_size: int, batch: int, seed: int, rank: int, start_step: int) -> None:
        self.size, self.batch, self.seed, self.rank, self.start = dataset_size, batch, seed, rank, start_step

    def __iter__(self):
        step = self.start
        while True:
            g = torch.Generator().manual_seed(step_seed(self.seed, self.rank, step, stream=1))
            yield torch.randint(self.size, (self.batch,), generator=g).tolist()
            step += 1


def leave_stop_signals_to_the_trainer(_: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGINT. Ctrl-C, `timeout` and job schedulers signal the whole
    process group; a worker killed by it makes the trainer raise mid-step instead of writing its snapshot.
    The trainer stops its workers itself when it exits."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def real_batch_iterator(dataset: ImageDataset, batch: int, opts: TrainOptions, rank: int, start_step: int
                        ) -> Iterator[Iterator[list]]:
    """Batches (images, angles, labels) for steps start_step, start_step+1, …; the data workers are stopped
    when the block exits, whether it returns or raises."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=RealBatches(len(dataset), batch, opts.seed, rank, start_step),
        num_workers=opts.workers, pin_memory=torch.cuda.is_available(), persistent_workers=opts.workers > 0,
        worker_init_fn=leave_stop_signals_to_the_trainer,
    )
    batches = iter(loader)
    try:
        yield with_plain_worker_errors(batches)
    finally:
        stop_data_workers(batches)


def with_plain_worker_errors(batches: Iterator[list]) -> Iterator[list]:
    """``batches``, with a dataset error raised in a worker re-raised as the dataset's own one-line message:
    the DataLoader wraps it as "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback…"."""
    while True:
        try:
            batch = next(batches)
        except ValueError as err:
            lines = str(err).rstrip().splitlines()
            if len(lines) < 2 or not lines[0].startswith("Caught "):
                raise
            raise ValueError(lines[-1].partition(": ")[2] or lines[-1]) from None
        yield batch


def stop_data_workers(batches: Iterator[list], join_timeout_s: float = 10.0) -> None:
    """Stop the worker processes of a DataLoader iterator now, not at interpreter exit.

    On an error the traceback keeps the iterator alive past ``main``; multiprocessing's exit handler then
    SIGTERMs the workers, which ignore SIGTERM (see ``leave_stop_signals_to_the_trainer``), and joins them
    forever. So the trainer asks them to stop, and SIGKILLs any still alive (e.g. stuck decoding a file)."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # absent for workers=0
    if shutdown is not None:
        shutdown()
    for worker in getattr(batches, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=join_timeout_s)


def fake_conditioning(dataset: ImageDataset, cfg: ModelConfig, batch: int, device: torch.device
                      ) -> tuple[Tensor, Tensor]:
    """Labels [b, c_dim] and rendering cameras [b, 3] for fakes: from random dataset items (mirrors included)
    for the 'custom' distribution, else drawn from the configured distribution (docs/method.md §6.4)."""
    idx = torch.randint(len(dataset), (batch,)).numpy()
    c = torch.from_numpy(dataset.labels[idx][:, : cfg.generator.c_dim])
    cam = cfg.generator.camera
    if cam.distribution == "custom":
        angles = torch.from_numpy(dataset.camera_angles[idx])
    elif cam.distribution == "spherical_uniform":
        angles = sample_spherical_uniform(batch)
    else:
        angles = sample_normal(batch, cam.yaw_mean, cam.yaw_std, cam.pitch_mean, cam.pitch_std)
    return c.to(device), angles.to(device)
