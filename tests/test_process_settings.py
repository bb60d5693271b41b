"""Subnormal floats are flushed to zero wherever epigraf computes on the CPU (process_settings.flush_denormals)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from epigraf.nn.discriminator import Discriminator
from epigraf.patches import PatchParams
from epigraf.process_settings import DENORMALS_OPT_OUT_ENV, denormals_flushed
from test_discriminator import TINY_CFG

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny

# The conftest turned flushing on (as the CLI does); these tests check it, so they must not set it themselves.
pytestmark = [
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="FTZ/DAZ are x86 flags"),
    pytest.mark.skipif(os.environ.get(DENORMALS_OPT_OUT_ENV) == "1", reason="subnormals kept on purpose"),
]


def run_python(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_test_suite_runs_with_denormals_flushed_on_every_thread():
    assert denormals_flushed()


def test_a_saturated_discriminator_step_leaves_no_subnormal_gradients():
    """The stall's trigger: fake logits near −100 make softplus' gradient ~1e−44, which would flow back
    through every convolution as subnormals."""
    torch.manual_seed(0)
    D = Discriminator(TINY_CFG)
    images = torch.randn(4, 3, 16, 16)
    pp = PatchParams(scales=torch.full((4, 2), 0.5), offsets=torch.full((4, 2), 0.25))
    logits = D(images, None, pp)
    saturated = logits - logits.detach() - 100.0
    F.softplus(saturated).mean().backward()
    grads = torch.cat([p.grad.flatten() for p in D.parameters() if p.grad is not None])
    subnormal = (grads != 0) & (grads.abs() < SMALLEST_NORMAL)
    assert int(subnormal.sum()) == 0


def test_every_command_flushes_before_it_runs():
    out = run_python("""
        import epigraf.commands.train as command, epigraf.cli as cli
        from epigraf.process_settings import denormals_flushed
        command.run = lambda args: print(denormals_flushed()) or 0
        cli.main(["train"])
    """)
    assert out == "True"


def test_the_training_library_call_flushes_in_a_fresh_process():
    out = run_python("""
        import epigraf.train.loop as loop
        from epigraf.process_settings import denormals_flushed
        from epigraf.train.options import TrainOptions
        loop._train = lambda *args: print(denormals_flushed())
        loop.train(TrainOptions(device="cpu"))
    """)
    assert out == "True"


def test_the_opt_out_keeps_denormals():
    out = run_python("""
        import epigraf.commands.train as command, epigraf.cli as cli
        from epigraf.process_settings import denormals_flushed
        command.run = lambda args: print(denormals_flushed()) or 0
        cli.main(["train"])
    """, **{DENORMALS_OPT_OUT_ENV: "1"})
    assert out == "False"
