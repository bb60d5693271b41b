"""Strict state-dict loading with errors that name every offending key."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

MAX_LISTED = 12


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > MAX_LISTED else "")


def check_state_fits(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], what: str) -> None:
    """Raise ValueError naming missing, unexpected and mis-shaped keys of ``state`` against ``expected`` (a
    module's state dict; meta tensors do, so a file can be checked before the model is allocated)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (file {list(state[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_listing(misshaped)}")
    if problems:
        raise ValueError(f"{what} state dict does not fit the model — " + "; ".join(problems))


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Copy ``state`` into ``module``; raise ValueError naming missing, unexpected and mis-shaped keys."""
    expected = module.state_dict()
    check_state_fits(expected, state, what)
    with torch.no_grad():
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
