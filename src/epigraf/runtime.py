"""Process-level settings: the CPU allocator (speed) and CUDA's fp32 precision (fidelity, SPEC §1.8).

PyTorch's CPU tensors come from glibc malloc, which serves every large block with a fresh ``mmap`` and
returns it with ``munmap`` on free. A training step allocates and frees gigabytes of activations, so each
step re-faults every page it touches: on a 2-core machine about a third of the step went to the kernel
(ffhq256, batch 4: 23 s of system time in a 51 s generator step, 9.3 M page faults). Keeping freed
memory in the heap for reuse removes that (system time 0.6 s, step 39 s) at the price of a higher peak
resident size (8.1 → 10.4 GiB there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
OPT_OUT_ENV = "EPIGRAF_NO_MALLOC_TUNING"
_tuned = False


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse (no mmap for large blocks, no trimming). Idempotent.

    Returns whether the setting is active. A no-op off glibc/Linux or when ``EPIGRAF_NO_MALLOC_TUNING=1``.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get(OPT_OUT_ENV) == "1" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        log.debug("mallopt refused the allocator settings; continuing with the defaults")
        return False
    _tuned = True
    return True


def release_memory() -> None:
    """Hand freed memory back to the system after a large one-off job (a big mesh in a long-running viewer):
    CUDA's cached blocks, and glibc's heap, which ``tune_cpu_allocator`` otherwise keeps."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc: nothing to trim


def configure_cuda_for_training() -> None:
    """The original's CUDA settings (SPEC §1.8): true fp32 (no TF32) and cuDNN autotuning.

    TF32 rounds matmul/conv inputs to 10 mantissa bits; the paper's numbers were trained without it. The
    autotuner pays once per input shape, and training repeats the same shapes every step.
    """
    import torch  # here, not at the top: the CLI imports this module before it knows it needs torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
