"""epigraf's training step replays the original's recorded training steps (fixtures/original/<set>_train*, README
section "Training trajectory"): the same D logits, gradients, optimiser steps, weights, G_ema and buffers.

Sets are every ``*_train.json`` in the folders of ``$EPIGRAF_ORIGINAL_FIXTURES`` (os.pathsep-separated; default
conftest's fixture folder: ``$EPIGRAF_FIXTURES``, else the one beside the repository); the test is skipped only
when none of those folders exists. Each iteration runs ``epigraf.train.loop.training_step``, the function
``train()`` runs, with every draw (z, labels, cameras, GPC cameras, patch parameters, the real batch) taken from
the fixture, then ``update_ema`` with our ``ema_beta``.
Everything else comes from our code: optimisers (``make_optimizers``), the lazy-R1 gain, blur, phase order.
Summaries are compared in the original's parameter shape and scale: the compat key mapping only renames
(``epigraf.compat.original``), so our stored tensors are the original's (equalised-lr weights unscaled, no
reshape or transposition; the shapes are checked). A failure names the first quantity over its threshold.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from conftest import _load_tensors, original_fixtures_dir, rel_err
from epigraf.compat.original import (
    convert_discriminator_state,
    convert_generator_state,
    from_original,
    model_config,
)
from epigraf.nn.layers import fir_filter_2d
from epigraf.patches import PatchParams
from epigraf.schedules import blur_sigma, ema_beta
from epigraf.train.distributed import DistEnv
from epigraf.train.draws import FakeDraws, IterationDraws, RealBatch
from epigraf.train.loop import training_step, update_ema
from epigraf.train.loss import PatchGANLoss, PhaseResult
from epigraf.train.step import make_optimizers

ENV_VAR = "EPIGRAF_ORIGINAL_FIXTURES"

# Options whose random draws inside the networks the fixtures do not record: a set using them cannot be replayed.
UNREPLAYABLE = (
    ("use_noise", False, "StyleGAN noise inputs (random noise in training)"),
    ("camera_cond_drop_p", 0.0, "dropout of G's pose conditioning"),
    ("camera_cond_noise_std", 0.0, "noise on G's pose conditioning"),
    ("D_camera_cond_drop_p", 0.0, "dropout of D's camera conditioning"),
)


def fixture_folders() -> list[Path]:
    value = os.environ.get(ENV_VAR)
    return [Path(p) for p in value.split(os.pathsep) if p] if value else [original_fixtures_dir()]


def train_sets() -> list[Any]:
    folders = [f for f in fixture_folders() if f.is_dir()]
    if not folders:
        reason = f"no fixture folder exists: {', '.join(map(str, fixture_folders()))} (set ${ENV_VAR})"
        return [pytest.param(None, id="no-fixtures", marks=pytest.mark.skip(reason=reason))]
    sets = sorted(p for f in folders for p in f.glob("*_train.json"))
    if not sets:
        return [pytest.param(None, id="no-sets")]
    return [pytest.param(p, id=p.name[: -len("_train.json")]) for p in sets]


# ----------------------------------------------------------------------------- summaries


def summary(x: Tensor) -> Tensor:
    """[Σx, Σx², max|x|, Σ x_i·cos(0.7 i + 0.1)] in float64, i the row-major flat index (the fixture's summary)."""
    x = x.detach().double().reshape(-1)
    i = torch.arange(x.numel(), dtype=torch.float64)
    return torch.stack([x.sum(), x.square().sum(), x.abs().max(), (x * torch.cos(0.7 * i + 0.1)).sum()])


def summary_error(ours: Tensor, ref: Tensor) -> float:
    """max(|√Σx² − √Σx²_ref|, |Σx − Σx_ref|, |probe − probe_ref|) / √Σx²_ref (0 when both are all zero)."""
    diff = max(abs(ours[1].sqrt() - ref[1].sqrt()).item(), abs(ours[0] - ref[0]).item(), abs(ours[3] - ref[3]).item())
    norm = ref[1].sqrt().item()
    if norm == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / norm


# ----------------------------------------------------------------------------- the fixture


@dataclass
class TrainFixture:
    name: str
    index: dict[str, Any]
    config: dict[str, Any]
    init: dict[str, Tensor]
    traj: dict[str, Tensor]

    @classmethod
    def load(cls, index_path: Path) -> TrainFixture:
        index = json.loads(index_path.read_text())
        root = index_path.parent
        return cls(index.get("set", index_path.name[: -len("_train.json")]), index, index["config"],
                   _load_tensors(root / index["files"]["init"]), _load_tensors(root / index["files"]["traj"]))

    def state(self, net: str) -> dict[str, Tensor]:
        prefix = f"{net}."
        return {k[len(prefix):]: v for k, v in self.init.items() if k.startswith(prefix)}

    def fakes(self, it: str, phase: str) -> FakeDraws:
        t = self.traj
        return FakeDraws(t[f"{it}.{phase}.gen_z"], t[f"{it}.{phase}.gen_c"], t[f"{it}.{phase}.gen_camera_angles"],
                         t[f"{it}.{phase}.gen_camera_angles_cond"], self.patch(it, phase, "fake"))

    def patch(self, it: str, phase: str, kind: str) -> PatchParams:
        return PatchParams(self.traj[f"{it}.{phase}.{kind}_patch_scales"],
                           self.traj[f"{it}.{phase}.{kind}_patch_offsets"])

    def draws(self, it: dict[str, Any]) -> IterationDraws:
        n, t = it["name"], self.traj
        phases = [p["name"] for p in it["phases"]]
        real = RealBatch(t[f"{n}.real_img"], t[f"{n}.real_c"], t[f"{n}.real_camera_angles"])
        return IterationDraws(real, self.fakes(n, "Gall"), self.fakes(n, "Dmain"), self.patch(n, "Dmain", "real"),
                              self.patch(n, "Dreg", "real") if "Dreg" in phases else None)


def original_names(state: dict[str, Tensor], ours: dict[str, Tensor], convert) -> dict[str, str]:
    """Original key → our key, through the compat mapping (which renames only: the values are the same objects)."""
    by_id = {id(v): k for k, v in state.items()}
    names = {by_id[id(v)]: k for k, v in convert(state).items()}
    for orig, name in names.items():
        if tuple(state[orig].shape) != tuple(ours[name].shape):
            raise AssertionError(f"{orig} is {list(state[orig].shape)} in the original, {name} "
                                 f"{list(ours[name].shape)} here: summaries need the original's shape")
    return names


# ----------------------------------------------------------------------------- the replay


@dataclass
class Row:
    """One compared quantity, in replay order."""

    iteration: str
    phase: str
    quantity: str
    name: str
    error: float
    threshold: float

    @property
    def ok(self) -> bool:
        return self.error <= self.threshold

    def describe(self) -> str:
        where = " ".join(x for x in (self.iteration, self.phase, self.quantity, self.name) if x)
        return f"{where}: error {self.error:.3g} > threshold {self.threshold:.3g}"


class Recorder:
    """The StepObserver of the replay: each phase's logits, gradients, weights before and after its step."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.logits: dict[str, dict[str, Tensor]] = {}
        self.grads: dict[str, dict[str, Tensor]] = {}
        self.before: dict[str, dict[str, Tensor]] = {}
        self.after: dict[str, dict[str, Tensor]] = {}

    def before_step(self, phase: str, module: nn.Module, result: PhaseResult) -> None:
        self.phases.append(phase)
        self.logits[phase] = {k: v for k, v in (("fake", result.fake_logits), ("real", result.real_logits))
                              if v is not None}
        params = dict(module.named_parameters())
        self.grads[phase] = {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}
        self.before[phase] = {k: p.detach().clone() for k, p in params.items()}

    def after_step(self, phase: str, module: nn.Module) -> None:
        self.after[phase] = {k: p.detach().clone() for k, p in module.named_parameters()}


def check_replayable(config: dict[str, Any]) -> None:
    for key, needed, what in UNREPLAYABLE:
        if config.get(key, needed) != needed:
            pytest.fail(f"{key} = {config[key]!r}: {what} draws at random inside the networks and the fixture does "
                        "not record those draws; this set cannot be replayed")
    if config.get("nerf_noise_std_init", 0.0) != 0.0:
        pytest.fail(f"nerf_noise_std_init = {config['nerf_noise_std_init']}: NeRF density noise is not recorded")


def replay(fx: TrainFixture) -> list[Row]:
    """Run every iteration of the fixture through our training step; one Row per compared quantity."""
    index, cfg = fx.index, fx.config
    check_replayable(cfg)
    original = cfg["original_cfg"]
    g_state, d_state = fx.state("G"), fx.state("D")
    G, D = from_original(cfg, g_state, d_state)
    G.train()
    D.train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    g_names = original_names(g_state, dict(G.state_dict()), convert_generator_state)
    d_names = original_names(d_state, dict(D.state_dict()), convert_discriminator_state)
    for optim in (original["generator"]["optim"], original["discriminator"]["optim"]):
        assert tuple(optim["betas"]) == (0.0, 0.99), f"Adam betas {optim['betas']}: make_optimizers uses (0, 0.99)"
    interval = index["D_reg_interval"]
    G_opt, D_opt = make_optimizers(G, D, original["generator"]["optim"]["lr"], original["discriminator"]["optim"]["lr"],
                                   interval)
    loss = PatchGANLoss(model_config(cfg), G, D, None, index["r1_gamma"], index["blur_init_sigma"],
                        index["blur_fade_kimg"], deterministic_render=True)
    env = DistEnv(0, 1, torch.device("cpu"))
    t, rows = fx.traj, []

    def add(it: str, phase: str, quantity: str, name: str, error: float, threshold: float) -> None:
        rows.append(Row(it, phase, quantity, name, error, threshold))

    for it in index["iterations"]:
        n, tol = it["name"], it["tolerance"]
        kimg = it["cur_nimg"] / 1000
        add(n, "", "blur sigma", "", abs(blur_sigma(kimg, index["blur_init_sigma"], index["blur_fade_kimg"])
                                         - it["blur_sigma"]), 1e-6)
        rec = Recorder()
        training_step(loss, fx.draws(it), kimg, it["batch_idx"], G_opt, D_opt, env, interval,
                      contextlib.nullcontext(), nonfinite_grads="nan_to_num", observer=rec)
        phases = [p["name"] for p in it["phases"]]
        add(n, "", f"phase order {rec.phases} vs {phases}", "", 0.0 if rec.phases == phases else math.inf, 0.0)
        for p in it["phases"]:
            phase = p["name"]
            ours_gain = interval if phase == "Dreg" else 1
            add(n, phase, f"gain {ours_gain} vs {p['gain']}", "", abs(ours_gain - p["gain"]), 0.0)
            for kind, logits in rec.logits.get(phase, {}).items():
                add(n, phase, "logits", kind, rel_err(logits, t[f"{n}.{phase}.{kind}_logits"]), tol["logits"])
            names = g_names if phase == "Gall" else d_names
            listed = index["G_param_names"] if phase == "Gall" else index["D_param_names"]
            for orig in listed:
                ours = names[orig]
                key = f"{n}.{phase}.grad.{orig}"
                grad = rec.grads.get(phase, {}).get(ours)
                if (key in t) != (grad is not None):
                    add(n, phase, "gradient present" if key in t else "gradient absent", orig, math.inf, 0.0)
                elif grad is not None:
                    add(n, phase, "grad", orig, summary_error(summary(grad), t[key]), tol["grad"])
                before, after = rec.before[phase][ours], rec.after[phase][ours]
                add(n, phase, "update", orig, summary_error(summary(after - before), t[f"{n}.{phase}.update.{orig}"]),
                    tol["update"])
                # The index gives weights after a step no threshold of their own: they are held to the final weights'.
                add(n, phase, "after", orig, summary_error(summary(after), t[f"{n}.{phase}.after.{orig}"]),
                    index["tolerance_final"])
        beta = ema_beta(index["batch"], it["cur_nimg"], index["ema_kimg"], index["ema_rampup"])
        add(n, "", "EMA beta", "", abs(beta - it["ema_beta"]), 1e-12)
        update_ema(G_ema, G, beta)
        ema_state = dict(G_ema.state_dict())
        for orig in index["G_param_names"]:
            add(n, "", "G_ema", orig, summary_error(summary(ema_state[g_names[orig]]), t[f"{n}.G_ema.{orig}"]),
                tol["G_ema"])
        for orig in index["G_buffer_names"]:
            # The [1, 3, 3, 1] resampling filters are constants here (the compat mapping checks and drops them).
            ours = ema_state[g_names[orig]] if orig in g_names else fir_filter_2d()
            add(n, "", "G_buffers", orig, summary_error(summary(ours), t[f"{n}.G_buffers.{orig}"]), tol["G_buffers"])

    for net, module, convert in (("G", G, convert_generator_state), ("D", D, convert_discriminator_state),
                                 ("G_ema", G_ema, convert_generator_state)):
        prefix = f"final.{net}."
        ref = convert({k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)})
        ours = dict(module.state_dict())
        if ref.keys() != ours.keys():
            add("final", net, "keys", str(sorted(ref.keys() ^ ours.keys())), math.inf, 0.0)
        for key in sorted(ref.keys() & ours.keys()):
            add("final", net, "tensor", key, rel_err(ours[key], ref[key]), index["tolerance_final"])

    for opt, settings, what in ((G_opt, index["G_adam"], "G_adam"), (D_opt, index["D_adam"], "D_adam")):
        (group,) = opt.param_groups
        ours = [group["lr"], *group["betas"], group["eps"]]
        theirs = [settings["lr"], *settings["betas"], settings["eps"]]
        add("settings", "", what, "lr, betas, eps", max(abs(a - b) / abs(b) if b else abs(a)
                                                        for a, b in zip(ours, theirs, strict=True)), 1e-12)
    return rows


def error_table(rows: list[Row]) -> str:
    """Max error per iteration and quantity, beside its threshold."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        quantity = row.quantity if row.quantity in ("logits", "grad", "update", "after", "G_ema", "G_buffers",
                                                     "tensor") else None
        if quantity is not None:
            key = (row.iteration, quantity if row.iteration != "final" else f"{row.phase} tensors")
            groups.setdefault(key, []).append(row)
    lines = [f"{'iteration':<10} {'quantity':<16} {'max error':>10} {'threshold':>10}  worst"]
    for (it, quantity), members in groups.items():
        worst = max(members, key=lambda r: r.error / r.threshold if r.threshold else r.error)
        lines.append(f"{it:<10} {quantity:<16} {max(r.error for r in members):>10.2e} {worst.threshold:>10.0e}  "
                     f"{worst.phase} {worst.name}")
    return "\n".join(lines)


@pytest.mark.parametrize("index_path", train_sets())
def test_replay(index_path: Path | None) -> None:
    if index_path is None:
        pytest.fail(f"no *_train.json in {', '.join(str(f) for f in fixture_folders() if f.is_dir())}")
    rows = replay(TrainFixture.load(index_path))
    print(error_table(rows))
    failed = [row for row in rows if not row.ok]
    assert not failed, f"first difference from the original: {failed[0].describe()} ({len(failed)} over threshold)"
