"""Transparent huge pages for torch's CPU allocations: asked for on ``import epigraf``, before torch reads it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from epigraf.runtime import OPT_OUT_ENV, TORCH_HUGE_PAGES_ENV

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
        from epigraf.runtime import request_huge_pages
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
