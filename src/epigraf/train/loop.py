"""The training loop (docs/method.md §5), top to bottom: set up → iterate (G step, D step, lazy R1, EMA, ADA) → log,
visualise, evaluate and snapshot every few ticks.

Randomness is a pure function of (seed, rank, step): each iteration seeds the global RNG and draws its
data indices from a generator with that seed, so resuming from a snapshot replays the uninterrupted run
step for step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from epigraf.cameras import sample_normal, sample_spherical_uniform
from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.config import ModelConfig, preset
from epigraf.data.dataset import ImageDataset
from epigraf.files import atomic_write, strict_json
from epigraf.metrics import FeatureExtractor, InceptionFeatures, MetricResult, TorchScriptFeatures, compute_metric
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.nn.state import load_state_strict
from epigraf.process_settings import configure_cuda_for_training, ensure_denormals_flushed, trim_cpu_heap
from epigraf.schedules import adam_settings_for_lazy_reg, blur_sigma, ema_beta, nerf_noise_std, patch_beta
from epigraf.train import distributed
from epigraf.train.augment import AdaptiveP, AugmentPipe
from epigraf.train.loss import PatchGANLoss, PhaseInputs
from epigraf.train.options import TrainOptions
from epigraf.train.run_snapshots import (
    load_state,
    network_path,
    prepare_run_dir,
    remove_unfinished_writes,
    resolve_resume,
    tensor_bytes,
    write_snapshot,
)
from epigraf.train.visualize import FakesSchedule, render_fake_grid, save_camera_path_video, save_image_grid

log = logging.getLogger(__name__)

VIDEO_LATENTS = 4
# A CPU step that leaves this much free heap hands it back (why: process_settings.trim_cpu_heap).
HEAP_TRIM_BYTES = 4 << 30


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A distinct 63-bit seed per (seed, rank, step, stream)."""
    return int(np.random.SeedSequence([seed, rank, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class InterruptFlag:
    """Set by SIGTERM/SIGINT; the loop snapshots at the next iteration boundary and exits cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resolve_dataset(opts: TrainOptions, resolution: int, env: distributed.DistEnv) -> ImageDataset:
    """The user's dataset, or the built-in one (rendered once into the cache by rank 0 while others wait)."""
    if opts.data is not None:
        return ImageDataset(opts.data, mirror=opts.mirror)
    from epigraf.data.builtin import build_builtin_dataset

    if env.is_main:
        log.info("preparing the built-in dataset at %d² (rendered once, then cached)", resolution)
        path = build_builtin_dataset(resolution=resolution, progress=opts.progress)
    distributed.barrier(env)
    if not env.is_main:
        path = build_builtin_dataset(resolution=resolution)
    return ImageDataset(path, mirror=opts.mirror)


def model_config_for(opts: TrainOptions, dataset: ImageDataset, base: ModelConfig) -> ModelConfig:
    """``base`` (the preset), adapted to the dataset (labels, mean pose) and the options (pose conditioning)."""
    cfg = base
    g, d = cfg.generator, cfg.discriminator
    if dataset.resolution != g.image_resolution:
        raise ValueError(f"dataset images are {dataset.resolution}² but the model ({cfg.name!r}) trains at "
                         f"{g.image_resolution}²; convert with `epigraf dataset convert --resolution "
                         f"{g.image_resolution}`")
    c_dim = dataset.c_dim if opts.use_labels else 0
    if g.c_dim and c_dim != g.c_dim:
        raise ValueError(f"preset {opts.preset!r} is conditional on {g.c_dim} classes, the dataset has {c_dim} "
                         "(pass --no-use-labels for an unconditional model only if the preset allows it)")
    if g.camera.distribution == "custom" and not dataset.has_cameras:
        raise ValueError(f"preset {opts.preset!r} renders from the dataset's poses, but the dataset has no "
                         "camera_angles in dataset.json")
    mean_pose = dataset.mean_camera_pose or g.mean_camera_pose
    g = dataclasses.replace(g, c_dim=c_dim, camera_cond=opts.g_camera_cond or opts.pose_cond,
                            mean_camera_pose=tuple(mean_pose))
    d = dataclasses.replace(d, c_dim=c_dim, camera_cond=opts.d_camera_cond or opts.pose_cond,
                            camera_cond_drop_p=opts.d_camera_cond_drop_p)
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


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], loss: Tensor,
                   env: distributed.DistEnv) -> bool:
    """Backward, average gradients over ranks, and step only if the loss and every gradient are finite."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(params, env)
    grads = [p.grad for p in params if p.grad is not None]
    finite = torch.isfinite(loss.detach()) & torch.stack([torch.isfinite(g).all() for g in grads]).all()
    finite = bool(distributed.all_reduce_mean(finite.float(), env) == 1)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite


@contextlib.contextmanager
def timed_phase(timings: dict[str, float] | None, name: str, device: torch.device) -> Iterator[None]:
    """Adds the wall seconds of the block to ``timings[name]`` and this process's CPU seconds (all threads) to
    ``timings[name + "_cpu"]`` when timings are asked for (benchmarks); CPU time is what a shared machine's
    load disturbs least. Waits for CUDA's queued kernels at both ends so that each phase's own kernels count."""
    if timings is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - wall
    timings[f"{name}_cpu"] = timings.get(f"{name}_cpu", 0.0) + time.process_time() - cpu


def training_step(loss: PatchGANLoss, x: PhaseInputs, kimg: float, step: int, G_opt: torch.optim.Optimizer,
                  D_opt: torch.optim.Optimizer, env: distributed.DistEnv, r1_interval: int,
                  autocast: contextlib.AbstractContextManager, timings: dict[str, float] | None = None,
                  ) -> tuple[bool, dict[str, float], Tensor]:
    """One iteration's optimisation (docs/method.md §5.4): the G step, the D step, and on every ``r1_interval``-th step
    the lazy R1 step. Returns (every step was finite, stats, the D step's real logits [b] for ADA).
    ``timings``, when given, receives the wall seconds of the phases "G", "D" and "R1"."""
    G, D = loss.G, loss.D
    g_params, d_params = list(G.parameters()), list(D.parameters())
    with timed_phase(timings, "G", env.device):
        G.requires_grad_(True)
        D.requires_grad_(False)
        with autocast:
            g_loss, g_stats = loss.generator_loss(x, kimg)
        ok = optimizer_step(G_opt, g_params, g_loss, env)
    with timed_phase(timings, "D", env.device):
        G.requires_grad_(False)
        D.requires_grad_(True)
        with autocast:
            d_loss, real_logits, d_stats = loss.discriminator_loss(x, kimg)
        ok &= optimizer_step(D_opt, d_params, d_loss, env)
    if step % r1_interval == 0:
        with timed_phase(timings, "R1", env.device):
            with autocast:
                r1_loss, r1_stats = loss.r1_loss(x, kimg, r1_interval)
            ok &= optimizer_step(D_opt, d_params, r1_loss, env)
        d_stats.update(r1_stats)
    if env.device.type == "cpu":
        trim_cpu_heap(min_free_bytes=HEAP_TRIM_BYTES)
    return ok, {**g_stats, **d_stats}, real_logits


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


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


@dataclass
class TrainResult:
    """What a finished (or interrupted) training leaves in memory: the run folder and this rank's networks."""

    run_dir: Path
    G: Generator
    G_ema: Generator
    D: Discriminator
    cur_nimg: int
    skipped_steps: int


def train(opts: TrainOptions, model: ModelConfig | None = None) -> TrainResult:
    """Run (or resume) a training. Safe to call under torchrun.

    ``model`` replaces the architecture of ``opts.preset`` (e.g. a tiny model for tests); the dataset still
    adapts labels and the mean pose.
    """
    ensure_denormals_flushed()
    env = distributed.setup(opts.device)
    try:
        base = model or preset(opts.preset)
        if opts.resolution:
            base = base.with_image_resolution(opts.resolution)
        # From the start, not only around the loop: a stop signal during set-up also ends in a snapshot
        # (after the first step) rather than killing the process.
        with InterruptFlag() as interrupt, ExitStack() as cleanup:
            return _train(opts, base, env, interrupt, cleanup)
    finally:
        distributed.teardown(env)


def _train(opts: TrainOptions, base: ModelConfig, env: distributed.DistEnv, interrupt: InterruptFlag,
           cleanup: ExitStack) -> TrainResult:
    """The training proper; ``cleanup`` stops what it starts (data workers) however it ends."""
    device = env.device
    if device.type == "cuda":
        configure_cuda_for_training()
    opts = opts.with_preset_defaults()
    batch_size = opts.batch_size
    if batch_size % env.world_size:
        raise ValueError(f"batch size {batch_size} is not divisible by the {env.world_size} processes")
    batch_gpu = batch_size // env.world_size
    tick_kimg = opts.tick_kimg

    resume = None
    if opts.resume is not None:
        resume = resolve_resume(opts.resume, Path(opts.run) if opts.run else None, Path(opts.out))
    dataset = resolve_dataset(opts, base.generator.image_resolution, env)
    cfg = model_config_for(opts, dataset, base)

    torch.manual_seed(opts.seed)
    G = Generator(cfg.generator).to(device).train()
    D = Discriminator(cfg.discriminator).to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    augment = AugmentPipe().to(device) if opts.augment == "ada" else None
    ada = AdaptiveP(opts.ada_target, opts.ada_interval, opts.ada_kimg, batch_size) if augment is not None else None
    g_params, d_params = list(G.parameters()), list(D.parameters())
    G_opt = torch.optim.Adam(g_params, lr=opts.g_lr, betas=(0.0, 0.99), eps=1e-8)
    d_lr, d_betas = adam_settings_for_lazy_reg(opts.d_lr, (0.0, 0.99), opts.r1_interval)
    D_opt = torch.optim.Adam(d_params, lr=d_lr, betas=d_betas, eps=1e-8)

    step, cur_nimg, cur_tick, skipped = 0, 0, 0, 0
    if resume is not None:
        network, state_file = resume
        ckpt = load_checkpoint(network)
        if ckpt.config != cfg:
            raise ValueError(f"{network} was trained with a different model config than these options give")
        state = load_state(state_file)
        for ours, theirs in ((G, ckpt.G), (G_ema, ckpt.G_ema), (D, ckpt.D)):
            ours.load_state_dict(theirs.state_dict())
        G_opt.load_state_dict(state["G_opt"])
        D_opt.load_state_dict(state["D_opt"])
        step, cur_nimg, cur_tick, skipped = state["step"], state["cur_nimg"], state["cur_tick"], state["skipped"]
        if augment is not None:
            augment.p.fill_(state["augment_p"])
            ada.load_state_dict(state["ada"])
        run_dir = network.parent
        if env.is_main:
            log.info("resuming from %s at %g kimg (tick %d)", state_file.name, cur_nimg / 1000, cur_tick)
            for path in remove_unfinished_writes(run_dir):
                log.info("removed %s, an unfinished write of the run that was stopped", path.name)
    elif opts.transfer is not None:
        ckpt = load_checkpoint(opts.transfer)
        for ours, theirs, name in ((G, ckpt.G or ckpt.G_ema, "G"), (G_ema, ckpt.G_ema, "G_ema"), (D, ckpt.D, "D")):
            if theirs is None:
                raise ValueError(f"--transfer {opts.transfer}: the checkpoint holds no {name}")
            load_state_strict(ours, theirs.state_dict(), f"--transfer {name}")
    if resume is None:
        run_dir = create_run_dir(opts, cfg.name) if env.is_main else Path(opts.run or opts.out)
    for net in (G, D, G_ema):
        distributed.broadcast_module(net, env)
    if opts.compile:
        G.compile()
        D.compile()

    loss = PatchGANLoss(cfg, G, D, augment, cfg.r1_gamma, opts.blur_init_sigma, opts.blur_fade_kimg,
                        opts.gpc_spoof_final, opts.gpc_spoof_kimg)
    reals = cleanup.enter_context(real_batch_iterator(dataset, batch_gpu, opts, env.rank, step))
    ema_kimg = opts.ema_kimg if opts.ema_kimg >= 0 else batch_size * 0.3125
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16)
    logger = RunLogger(run_dir, opts, cfg, env, start_nimg=cur_nimg) if env.is_main else None
    if logger is not None and resume is None:
        logger.save_reals(dataset)
        if opts.image_ticks:
            logger.save_fakes(G_ema, dataset, cfg, cur_nimg, video=False)  # the initialisation, at once
    fid_detector = fid_feature_extractor(opts, device) if logger is not None and opts.metrics_ticks else None

    tick_start_nimg, tick_start_time, tick_start_skipped, skipped_in_a_row = cur_nimg, time.time(), skipped, 0
    stats: dict[str, list[float]] = defaultdict(list)
    while True:
        kimg = cur_nimg / 1000
        torch.manual_seed(step_seed(opts.seed, env.rank, step))
        images, real_angles, real_c = next(reals)
        z = torch.randn(batch_gpu, cfg.generator.z_dim, device=device)
        fake_c, fake_angles = fake_conditioning(dataset, cfg, batch_gpu, device)
        x = PhaseInputs(
            real=images.to(device).float() / 127.5 - 1, real_c=real_c.to(device)[:, : cfg.generator.c_dim],
            real_angles=real_angles.to(device), z=z, fake_c=fake_c, fake_angles=fake_angles,
        )

        ok, step_stats, real_logits = training_step(loss, x, kimg, step, G_opt, D_opt, env, opts.r1_interval,
                                                    autocast)
        if env.enabled:
            G.mapping.w_avg.copy_(distributed.all_reduce_mean(G.mapping.w_avg, env))

        cur_nimg += batch_size
        step += 1
        skipped += not ok
        skipped_in_a_row = 0 if ok else skipped_in_a_row + 1
        if opts.max_skipped_in_a_row and skipped_in_a_row >= opts.max_skipped_in_a_row:
            raise ValueError(f"training diverged: the last {skipped_in_a_row} steps (to step {step}) all had a "
                             "non-finite loss or gradient and were skipped; lower --g-lr/--d-lr or resume from "
                             "an earlier snapshot (limit: --max-skipped-in-a-row)")
        update_ema(G_ema, G, ema_beta(batch_size, cur_nimg, ema_kimg, opts.ema_rampup))
        if ada is not None:
            ada.observe(distributed.all_gather_cat(real_logits, env))
            augment.p.fill_(ada.step(float(augment.p)))
        for k, v in step_stats.items():
            stats[k].append(v)

        done = cur_nimg >= opts.kimg * 1000
        tick_done = cur_nimg >= tick_start_nimg + tick_kimg * 1000
        if logger is not None:
            logger.progress(cur_nimg, {k: v[-1] for k, v in stats.items()},
                            augment_p=float(augment.p) if augment is not None else 0.0)
        if not (tick_done or done or interrupt.signal is not None):
            continue

        cur_tick += 1
        elapsed = time.time() - tick_start_time
        warn_about_skipped_steps(skipped - tick_start_skipped, (cur_nimg - tick_start_nimg) // batch_size, cur_tick,
                                 opts.max_skipped_in_a_row, env)
        snapshot_due = cur_tick % opts.snapshot_ticks == 0 or done or interrupt.signal is not None
        if logger is not None:
            logger.tick(cur_tick, cur_nimg, step, elapsed, cur_nimg - tick_start_nimg, stats, {
                "schedule/beta": patch_beta(cur_nimg / 1000, cfg.patch),
                "schedule/nerf_noise_std": nerf_noise_std(cur_nimg / 1000, cfg.generator.nerf_noise_std_init,
                                                          cfg.generator.nerf_noise_kimg_growth),
                "schedule/blur_sigma": blur_sigma(cur_nimg / 1000, opts.blur_init_sigma, opts.blur_fade_kimg),
                "augment/p": float(augment.p) if augment is not None else 0.0,
                "progress/skipped_steps": skipped,
            })
            if not snapshot_due and logger.fakes_schedule.due(cur_tick, time.time()):
                logger.save_fakes(G_ema, dataset, cfg, cur_nimg, video=logger.fakes_schedule.on_tick(cur_tick))
            if fid_detector is not None and cur_tick % opts.metrics_ticks == 0:
                logger.metric(compute_metric(G_ema, dataset, "fid2k_full", "dataset", fid_detector,
                                             device=device, num=opts.metrics_fakes), cur_nimg)
        distributed.barrier(env)  # rank 0 may have spent a while on images or metrics
        stats.clear()
        if snapshot_due:
            if env.is_main:
                save_snapshot(run_dir, cfg, G, G_ema, D, G_opt, D_opt, augment, ada,
                              step=step, cur_nimg=cur_nimg, cur_tick=cur_tick, skipped=skipped, opts=opts)
            if logger is not None and opts.image_ticks:  # after the snapshot: a stop's grace period goes to it first
                logger.save_fakes(G_ema, dataset, cfg, cur_nimg, video=done or logger.fakes_schedule.on_tick(cur_tick))
        if done or interrupt.signal is not None:
            if interrupt.signal is not None and logger is not None:
                log.info("received signal %d: snapshot written, exiting", interrupt.signal)
            break
        tick_start_nimg, tick_start_time, tick_start_skipped = cur_nimg, time.time(), skipped
    if logger is not None:
        logger.close()
    return TrainResult(run_dir, G, G_ema, D, cur_nimg, skipped)


# A tick skipping more than this fraction of its steps as non-finite is reported as a warning.
SKIPPED_WARNING_FRACTION = 0.1


def warn_about_skipped_steps(tick_skipped: int, tick_steps: int, tick: int, limit: int,
                             env: distributed.DistEnv) -> None:
    if env.is_main and tick_skipped > SKIPPED_WARNING_FRACTION * tick_steps:
        stop = f"training stops after {limit} in a row" if limit else "--max-skipped-in-a-row 0: it never stops"
        log.warning("tick %d: %d of its %d steps were skipped (non-finite loss or gradient); %s", tick,
                    tick_skipped, tick_steps, stop)


def save_snapshot(run_dir: Path, cfg: ModelConfig, G: Generator, G_ema: Generator, D: Discriminator,
                  G_opt: torch.optim.Optimizer, D_opt: torch.optim.Optimizer, augment: AugmentPipe | None,
                  ada: AdaptiveP | None, *, step: int, cur_nimg: int, cur_tick: int, skipped: int,
                  opts: TrainOptions) -> None:
    state = {
        "step": step, "cur_nimg": cur_nimg, "cur_tick": cur_tick, "skipped": skipped,
        "G_opt": G_opt.state_dict(), "D_opt": D_opt.state_dict(),
        "augment_p": float(augment.p) if augment is not None else 0.0,
        "ada": ada.state_dict() if ada is not None else {},
        "options": json.dumps(dataclasses.asdict(opts)),
    }
    needed = tensor_bytes([net.state_dict() for net in (G, G_ema, D)]) + tensor_bytes(state)
    write_snapshot(run_dir, cur_nimg, lambda path: save_checkpoint(path, cfg, G_ema=G_ema, G=G, D=D,
                                                                   metadata={"kimg": cur_nimg / 1000, "step": step}),
                   state, needed)
    log.info("snapshot %s", network_path(run_dir, cur_nimg).name)


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
        if opts.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=opts.kimg, initial=start_nimg / 1000, unit="kimg", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.2f}/{total:.0f} kimg [{elapsed}<{remaining}{postfix}]")
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
            log.info("tick %d kimg %.2f %s", tick, cur_nimg / 1000,
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

