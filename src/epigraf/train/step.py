"""Pieces of the training step shared by ``train()`` and the replay of the original's recorded steps: the
optimisers, the non-finite-gradient policies and the observer a replay uses to look inside a step.

The step itself is ``epigraf.train.loop.training_step``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from epigraf.schedules import adam_settings_for_lazy_reg

if TYPE_CHECKING:  # the options import this module; the loss (and the networks) need not come with them
    from epigraf.train.loss import PhaseResult

# What a step does with a non-finite loss or gradient (docs/method.md §10 row 14): "skip" leaves the weights
# untouched (ours, the default); "nan_to_num" replaces NaN by 0 and ±inf by ±1e5 and steps (the original).
NONFINITE_GRADS = ("skip", "nan_to_num")
GRAD_INF_REPLACEMENT = 1e5

ADAM_BETAS = (0.0, 0.99)
ADAM_EPS = 1e-8


def make_optimizers(G: nn.Module, D: nn.Module, g_lr: float, d_lr: float, r1_interval: int
                    ) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """G's plain Adam and D's Adam with the lazy-R1 correction (docs/method.md §5.4): lr·c, betas**c with
    c = interval / (interval + 1)."""
    G_opt = torch.optim.Adam(list(G.parameters()), lr=g_lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    lr, betas = adam_settings_for_lazy_reg(d_lr, ADAM_BETAS, r1_interval)
    D_opt = torch.optim.Adam(list(D.parameters()), lr=lr, betas=betas, eps=ADAM_EPS)
    return G_opt, D_opt


def nonfinite_flag(tensors: list[Tensor]) -> Tensor:
    """A 0-d bool tensor: True if any of ``tensors`` holds a NaN or an infinity.

    torch's fused multi-tensor check (the one AMP's grad scaler uses, here with scale 1, which leaves every value as
    it is) reads each tensor once; ``isfinite(g).all()`` per tensor makes four passes and a temporary per tensor
    (the difference on CPUs: benchmarks/RESULTS.md, "Where the time goes").
    """
    found = torch.zeros((), device=tensors[0].device) if tensors else torch.zeros(())
    if tensors:
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, torch.ones((), device=found.device))
    return found.bool()


def replace_nonfinite_(grads: list[Tensor]) -> None:
    """NaN → 0, +inf → 1e5, −inf → −1e5, in place (the original's gradient clean-up)."""
    for g in grads:
        torch.nan_to_num(g, nan=0.0, posinf=GRAD_INF_REPLACEMENT, neginf=-GRAD_INF_REPLACEMENT, out=g)


class StepObserver(Protocol):
    """Looks inside ``training_step``, phase by phase ("Gall", "Dmain", "Dreg"): ``before_step`` sees the phase's
    result and ``module``'s final gradients (averaged over ranks, non-finite values handled), ``after_step`` the
    weights after the optimiser step."""

    def before_step(self, phase: str, module: nn.Module, result: PhaseResult) -> None: ...

    def after_step(self, phase: str, module: nn.Module) -> None: ...
