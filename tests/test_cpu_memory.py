"""CPU memory settings: transparent huge pages for torch's allocations (asked for on ``import epigraf``, before
torch reads the setting) and the heap trimmed after a training step that leaves much of it free."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.process_settings import OPT_OUT_ENV, TORCH_HUGE_PAGES_ENV
from epigraf.train import loop
from epigraf.train.distributed import DistEnv
from test_checkpoint import tiny_model_config
from test_loss import make_loss, phase_inputs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux kernel feature")


def run_python(code: str, **env: str) -> str:
    """``code`` in a fresh interpreter whose environment has neither setting (this process set the first)."""
    clean = {k: v for k, v in os.environ.items() if k not in (TORCH_HUGE_PAGES_ENV, OPT_OUT_ENV)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120, env={**clean, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_epigraf_asks_torch_for_huge_pages():
    assert run_python("import epigraf, os; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))") == "1"


def test_the_opt_out_and_a_users_own_setting_are_kept():
    code = "import epigraf, os; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    assert run_python(code, **{OPT_OUT_ENV: "1"}) == "None"
    assert run_python(code, **{TORCH_HUGE_PAGES_ENV: "0"}) == "0"


def test_too_late_after_torch_and_says_so():
    out = run_python("""
        import os, torch
        from epigraf.process_settings import request_huge_pages
        print(request_huge_pages(), os.environ.get('THP_MEM_ALLOC_ENABLE'))
    """)
    assert out == "False None"


def test_torch_tensors_get_huge_pages_where_the_kernel_grants_them():
    """The whole chain: a 256 MiB tensor made after ``import epigraf`` is backed by huge pages (and not without)."""
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not setting.exists() or "[never]" in setting.read_text():
        pytest.skip("transparent huge pages are off in this kernel")
    code = """
        import epigraf, torch
        x = torch.ones(64 * 2**20)
        print(next(int(line.split()[1]) for line in open('/proc/self/smaps_rollup') if 'AnonHugePages' in line))
    """
    assert int(run_python(code)) >= 128 * 2**10  # kB: at least half of the tensor
    if "[madvise]" in setting.read_text():  # only what asks for them gets them
        assert int(run_python(code, **{OPT_OUT_ENV: "1"})) < 128 * 2**10


def test_trimming_hands_the_tuned_heaps_free_pages_back():
    """With the heap tuned to keep freed memory (fast re-use), a freed 256 MiB tensor stays resident, and counted
    as free heap, until the trim; below the threshold nothing is trimmed: the growth the training loop stops."""
    out = run_python("""
        from epigraf.process_settings import free_heap_bytes, trim_cpu_heap, tune_cpu_allocator
        import torch
        assert tune_cpu_allocator()
        def rss_mib():
            return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS')) // 1024
        before = rss_mib()
        x = torch.ones(64 * 2**20)
        del x
        kept, free_mib = rss_mib(), free_heap_bytes() >> 20
        assert not trim_cpu_heap(min_free_bytes=1 << 30)
        still = rss_mib()
        assert trim_cpu_heap(min_free_bytes=128 << 20)
        print(kept - before, free_mib, still - before, rss_mib() - before)
    """)
    kept, free_mib, below_threshold, after_trim = map(int, out.split())
    assert kept >= 200 and free_mib >= 256 and below_threshold >= 200 and after_trim <= 50, out


def test_each_cpu_training_iteration_offers_a_trim_once(monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "trim_cpu_heap", lambda min_free_bytes: calls.append(min_free_bytes))
    torch.manual_seed(0)
    cfg = tiny_model_config()
    G, D = Generator(cfg.generator), Discriminator(cfg.discriminator)
    G_opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    D_opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    env = DistEnv(0, 1, torch.device("cpu"))
    for step in range(2):
        draws = phase_inputs(2, seed=step)
        if step % 2:
            draws.dreg_real_patch = None
        loop.training_step(make_loss(G, D), draws, 0.0, step, G_opt, D_opt, env, 2, contextlib.nullcontext())
        assert calls == [loop.HEAP_TRIM_BYTES] * (step + 1)
