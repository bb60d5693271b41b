"""The training loop (docs/method.md §5), top to bottom: set up → iterate (G step, D step, lazy R1, EMA, ADA) → log,
visualise, evaluate and snapshot every few ticks.

Randomness is a pure function of (seed, rank, step): each iteration seeds the global RNG and draws its
data indices from a generator with that seed, so resuming from a snapshot replays the uninterrupted run
step for step.

What the loop eats comes from ``data_feed`` (dataset, real batches, the fakes' labels and cameras); what it
leaves on disk besides snapshots is written by ``run_log`` (options, stats, metrics, grids of fakes).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.config import ModelConfig, config_differences, preset
from epigraf.metrics import compute_metric
from epigraf.metrics.geometry import training_evaluator
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.nn.state import load_state_strict
from epigraf.process_settings import configure_cuda_for_training, ensure_denormals_flushed, trim_cpu_heap
from epigraf.schedules import blur_sigma, ema_beta, gpc_spoof_prob, nerf_noise_std, patch_beta
from epigraf.train import distributed
from epigraf.train.augment import AdaptiveP, AugmentPipe
from epigraf.train.data_feed import (
    fake_conditioning,
    model_config_for,
    real_batch_iterator,
    resolve_dataset,
    step_seed,
)
from epigraf.train.draws import IterationDraws, RealBatch, draw_iteration
from epigraf.train.loss import PatchGANLoss, PhaseResult
from epigraf.train.options import TrainOptions
from epigraf.train.run_log import RunLogger, create_run_dir, fid_feature_extractor
from epigraf.train.run_snapshots import (
    load_state,
    network_path,
    remove_unfinished_writes,
    resolve_resume,
    tensor_bytes,
    write_snapshot,
)
from epigraf.train.step import NONFINITE_GRADS, StepObserver, make_optimizers, nonfinite_flag, replace_nonfinite_

log = logging.getLogger(__name__)

# A CPU step that leaves this much free heap hands it back (why: process_settings.trim_cpu_heap).
HEAP_TRIM_BYTES = 4 << 30


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


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], loss: Tensor,
                   env: distributed.DistEnv, nonfinite_grads: str = "skip",
                   before_step: Callable[[], None] | None = None) -> bool:
    """Backward, average gradients over ranks, and step. Returns whether the loss and every gradient were finite.

    With a non-finite one, ``nonfinite_grads`` "skip" leaves the weights untouched and "nan_to_num" (the
    original's) steps with NaN → 0, ±inf → ±1e5. ``before_step`` is called with the final gradients in place."""
    if nonfinite_grads not in NONFINITE_GRADS:
        raise ValueError(f"nonfinite_grads must be one of {NONFINITE_GRADS}, got {nonfinite_grads!r}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(params, env)
    grads = [p.grad for p in params if p.grad is not None]
    finite = torch.isfinite(loss.detach()) & ~nonfinite_flag(grads)
    finite = bool(distributed.all_reduce_mean(finite.float(), env) == 1)
    if nonfinite_grads == "nan_to_num" and not finite:
        replace_nonfinite_(grads)
    if finite or nonfinite_grads == "nan_to_num":
        if before_step is not None:
            before_step()
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


def training_step(loss: PatchGANLoss, draws: IterationDraws, kimg: float, step: int, G_opt: torch.optim.Optimizer,
                  D_opt: torch.optim.Optimizer, env: distributed.DistEnv, r1_interval: int,
                  autocast: contextlib.AbstractContextManager, timings: dict[str, float] | None = None, *,
                  nonfinite_grads: str = "skip", observer: StepObserver | None = None,
                  ) -> tuple[bool, dict[str, float], Tensor]:
    """One iteration's optimisation (docs/method.md §5.4), every random input from ``draws``: the G step ("Gall"),
    the D step ("Dmain") and on every ``r1_interval``-th step the lazy R1 step ("Dreg", loss × r1_interval).
    Returns (every step was finite, stats, the D step's real logits [b] for ADA). ``timings``, when given,
    receives the wall seconds of the phases "G", "D" and "R1"; ``observer`` sees each phase's gradients and
    step (the replay of the original's steps, tests/test_train_equivalence.py)."""
    with_r1 = step % r1_interval == 0
    if with_r1 != (draws.dreg_real_patch is not None):
        raise ValueError(f"step {step} {'has' if with_r1 else 'has no'} lazy R1 phase (interval {r1_interval}) "
                         f"but its draws {'lack' if with_r1 else 'have'} R1 real patches")
    G, D = loss.G, loss.D
    g_params, d_params = list(G.parameters()), list(D.parameters())

    def step_phase(phase: str, module: nn.Module, opt: torch.optim.Optimizer, params: list[nn.Parameter],
                   result: PhaseResult) -> bool:
        hook = None if observer is None else (lambda: observer.before_step(phase, module, result))
        finite = optimizer_step(opt, params, result.loss, env, nonfinite_grads, hook)
        if observer is not None:
            observer.after_step(phase, module)
        return finite

    with timed_phase(timings, "G", env.device):
        G.requires_grad_(True)
        D.requires_grad_(False)
        with autocast:
            g = loss.generator_loss(draws.gall, kimg)
        ok = step_phase("Gall", G, G_opt, g_params, g)
    with timed_phase(timings, "D", env.device):
        G.requires_grad_(False)
        D.requires_grad_(True)
        with autocast:
            d = loss.discriminator_loss(draws.dmain, draws.real, draws.dmain_real_patch, kimg)
        ok &= step_phase("Dmain", D, D_opt, d_params, d)
    stats = {**g.stats, **d.stats}
    if with_r1:
        with timed_phase(timings, "R1", env.device):
            with autocast:
                r1 = loss.r1_loss(draws.real, draws.dreg_real_patch, kimg, r1_interval)
            ok &= step_phase("Dreg", D, D_opt, d_params, r1)
        stats.update(r1.stats)
    if env.device.type == "cpu":
        trim_cpu_heap(min_free_bytes=HEAP_TRIM_BYTES)
    return ok, stats, d.real_logits


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


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
    G_opt, D_opt = make_optimizers(G, D, opts.g_lr, opts.d_lr, opts.r1_interval)
    loss = PatchGANLoss(cfg, G, D, augment, cfg.r1_gamma, opts.blur_init_sigma, opts.blur_fade_kimg,
                        distortion_weight=opts.distortion_weight, wrong_camera_weight=opts.d_wrong_camera_weight)
    loss.check_batch(batch_gpu)

    step, cur_nimg, cur_tick, skipped = 0, 0, 0, 0
    if resume is not None:
        network, state_file = resume
        ckpt = load_checkpoint(network)
        if ckpt.config != cfg:
            raise ValueError(f"{network} was trained with a different model config than these options give "
                             f"({'; '.join(config_differences(ckpt.config, cfg))}); give the options the run was "
                             "trained with (its options.json), e.g. those an earlier epigraf version defaulted to")
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

    reals = cleanup.enter_context(real_batch_iterator(dataset, batch_gpu, opts, env.rank, step))
    ema_kimg = opts.ema_kimg if opts.ema_kimg >= 0 else batch_size * 0.3125
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16)
    logger = RunLogger(run_dir, opts, cfg, env, start_nimg=cur_nimg) if env.is_main else None
    if logger is not None and resume is None:
        logger.save_reals(dataset)
        if opts.image_ticks:
            logger.save_fakes(G_ema, dataset, cfg, cur_nimg, video=False)  # the initialisation, at once
    fid_detector = fid_feature_extractor(opts, device) if logger is not None and opts.metrics_ticks else None
    geometry = training_evaluator(dataset.path, G_ema) if logger is not None and opts.geometry_ticks else None

    tick_start_nimg, tick_start_time, tick_start_skipped, skipped_in_a_row = cur_nimg, time.time(), skipped, 0
    stats: dict[str, list[float]] = defaultdict(list)
    while True:
        kimg = cur_nimg / 1000
        torch.manual_seed(step_seed(opts.seed, env.rank, step))
        images, real_angles, real_c, coverage = next(reals)
        real = RealBatch(torch.cat([images, coverage], dim=1).to(device).float() / 127.5 - 1,
                         real_c.to(device)[:, : cfg.generator.c_dim], real_angles.to(device))
        # Each phase its own z, labels, cameras, GPC cameras and patches, as the original (docs/method.md §5.4).
        draws = draw_iteration(real, cfg, kimg, lambda n: fake_conditioning(dataset, cfg, n, device),
                               spoof_p=gpc_spoof_prob(kimg, opts.gpc_spoof_final, opts.gpc_spoof_kimg),
                               with_r1=step % opts.r1_interval == 0)

        ok, step_stats, real_logits = training_step(loss, draws, kimg, step, G_opt, D_opt, env, opts.r1_interval,
                                                    autocast, nonfinite_grads=opts.nonfinite_grads)
        if env.enabled:
            G.mapping.w_avg.copy_(distributed.all_reduce_mean(G.mapping.w_avg, env))

        # The EMA's ramp-up counts the images seen before this step, as the original's (docs/method.md §5.5).
        beta = ema_beta(batch_size, cur_nimg, ema_kimg, opts.ema_rampup)
        cur_nimg += batch_size
        step += 1
        skipped += not ok
        skipped_in_a_row = 0 if ok else skipped_in_a_row + 1
        if opts.max_skipped_in_a_row and skipped_in_a_row >= opts.max_skipped_in_a_row:
            raise ValueError(f"training diverged: the last {skipped_in_a_row} steps (to step {step}) all had a "
                             "non-finite loss or gradient and were skipped; lower --g-lr/--d-lr or resume from "
                             "an earlier snapshot (limit: --max-skipped-in-a-row)")
        update_ema(G_ema, G, beta)
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
            if geometry is not None and (cur_tick % opts.geometry_ticks == 0 or done):
                logger.metric(geometry(G_ema), cur_nimg)
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
