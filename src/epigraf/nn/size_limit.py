"""The size of the networks a config describes, known before any weight is allocated.

A config read from a file (a checkpoint's metadata, an original pickle's hyperparameters) decides how much
memory building its networks takes; a crafted or corrupt one (``mlp_hidden`` 100000) would allocate tens
of GB before any check. The networks are first built on the ``meta`` device (shapes only, no memory) and
refused above a parameter limit far beyond any paper model (~30 M parameters each).
"""

from __future__ import annotations

import torch
from torch import Tensor

from epigraf.config import ModelConfig
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator

MAX_PARAMETERS = 2**29  # per network: 2 GiB of fp32 weights


def planned_state_dicts(config: ModelConfig, what: str, limit: int = MAX_PARAMETERS) -> dict[str, dict[str, Tensor]]:
    """{"G": …, "D": …}: the state dicts (meta tensors: shape and dtype, no data) of the networks ``config``
    builds. Raises ValueError naming ``what`` when a network has more than ``limit`` elements or the config
    builds none."""
    planned = {}
    for name, build in (("G", lambda: Generator(config.generator)), ("D", lambda: Discriminator(config.discriminator))):
        try:
            with torch.device("meta"):
                state = build().state_dict()
        except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as err:
            raise ValueError(f"{what}: the config does not describe a buildable {name}: {err}") from err
        size = sum(t.numel() for t in state.values())
        if size > limit:
            raise ValueError(f"{what}: the config describes a {name} of {size / 1e6:,.0f} M parameters "
                             f"({size * 4 / 2**30:,.1f} GiB), over the {limit / 1e6:,.0f} M this reader accepts; "
                             "the file is corrupt or crafted")
        planned[name] = state
    return planned
