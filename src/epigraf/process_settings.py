"""Process-level settings: the CPU allocator and subnormal floats (speed), CUDA's fp32 precision
(fidelity, docs/method.md §1.8).

PyTorch's CPU tensors come from glibc malloc, which serves every large block with a fresh ``mmap`` and
returns it with ``munmap`` on free. A training step allocates and frees gigabytes of activations, so each
step re-faults every page it touches, and on a small machine a large share of the step goes to the kernel.
Keeping freed memory in the heap for reuse removes that at the price of a higher peak resident size. On top
of that, torch's allocator can back its large blocks with 2 MiB transparent huge pages
(``THP_MEM_ALLOC_ENABLE``): 512× fewer page faults and TLB misses. What each setting saves and costs, measured:
benchmarks/RESULTS.md ("CPU: figures the code cites", and the sections it points to).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
OPT_OUT_ENV = "EPIGRAF_NO_MALLOC_TUNING"
TORCH_HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
DENORMALS_OPT_OUT_ENV = "EPIGRAF_KEEP_DENORMALS"
_tuned = False


def request_huge_pages() -> bool:
    """Ask torch's CPU allocator for transparent huge pages (module docstring). Returns whether they are asked for.

    torch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation, so this must run before ``import
    torch``: ``epigraf/__init__.py`` calls it first thing, which covers every ``epigraf`` command. Where torch
    was imported earlier it changes nothing and says so. Off with ``EPIGRAF_NO_MALLOC_TUNING=1`` (with the heap
    tuning), or by setting ``THP_MEM_ALLOC_ENABLE=0`` yourself. Linux only; the kernel grants the pages only
    where ``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` or ``always``.
    """
    if os.environ.get(OPT_OUT_ENV) == "1" or not sys.platform.startswith("linux"):
        return False
    if "torch" not in sys.modules:
        os.environ.setdefault(TORCH_HUGE_PAGES_ENV, "1")
    return os.environ.get(TORCH_HUGE_PAGES_ENV) == "1"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, loaded once (``find_library`` runs ``ldconfig``; the training loop asks every step); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse (no mmap for large blocks, no trimming). Idempotent.

    Returns whether the setting is active. A no-op off glibc/Linux or when ``EPIGRAF_NO_MALLOC_TUNING=1``.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get(OPT_OUT_ENV) == "1" or not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
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
    trim_cpu_heap()


def free_heap_bytes() -> int | None:
    """Bytes glibc's heap holds free for reuse (``mallinfo2().fordblks``); None off glibc ≥ 2.33."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    return int(libc.mallinfo2().fordblks)


def trim_cpu_heap(min_free_bytes: int = 0) -> bool:
    """Give the free pages of glibc's heap back to the system (``malloc_trim``) when it holds at least
    ``min_free_bytes`` free; → whether it trimmed. A no-op off glibc.

    Why the training loop calls it after a CPU step that leaves a lot free: with ``tune_cpu_allocator`` the heap
    never shrinks, and the holes that each phase's differently sized activations leave add up, so the peak
    resident size of a large model creeps up over the first iterations. Trimmed, it stays flat, for a few per cent
    more time per iteration: the pages handed back are faulted in again by the next step. Small models end their
    steps with little free and keep their pages. Figures: benchmarks/RESULTS.md (the heap-trim table).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    if min_free_bytes > 0:
        free = free_heap_bytes()
        if free is None or free < min_free_bytes:
            return False
    libc.malloc_trim(0)
    return True


def configure_cuda_for_training() -> None:
    """The original's CUDA settings (docs/method.md §1.8): true fp32 (no TF32) and cuDNN autotuning.

    TF32 rounds matmul/conv inputs to 10 mantissa bits; the paper's numbers were trained without it. The
    autotuner pays once per input shape, and training repeats the same shapes every step.
    """
    import torch  # here, not at the top: the CLI imports this module before it knows it needs torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True


def flush_denormals() -> bool:
    """Treat subnormal floats as zero in this process's CPU arithmetic (x86 FTZ/DAZ). Returns whether it is on.

    Why: once the discriminator saturates (fake logits near −100 after a D step), the gradients flowing back
    through its softplus are ~1e−40, below fp32's normal range, and x86 cores take a microcode path on every
    operation that touches a subnormal: a D phase becomes an order of magnitude slower (benchmarks/RESULTS.md,
    "CPU: figures the code cites").
    Why it is safe for fidelity: only magnitudes below 1.2e−38 change, and they become 0. Such a gradient
    moves an Adam step by < 1e−30 (Adam divides by √v + 1e−8), and no activation, weight or image of the
    model is anywhere near that scale; the original's fixtures are reproduced to 1e−4 with it on (the test
    suite runs with it on). Opt out with ``EPIGRAF_KEEP_DENORMALS=1``.

    The flag is per thread and new threads copy it from their creator, so it must be set before torch starts
    its worker threads (the first parallel operation): call this at process start. ``denormals_flushed``
    tells whether every worker thread has it.
    """
    if os.environ.get(DENORMALS_OPT_OUT_ENV) == "1":
        return False
    import torch
    return bool(torch.set_flush_denormal(True))


def denormals_flushed() -> bool:
    """Whether subnormals are flushed on every CPU thread torch computes on: a matrix product and a convolution,
    each split across the worker threads, of inputs whose products are subnormal, must come out exactly 0."""
    import torch
    tiny = torch.full((256, 256), 1e-20)
    product = tiny @ (tiny * 0.1)
    conv = torch.nn.functional.conv2d(torch.full((4, 16, 32, 32), 1e-20), torch.full((16, 16, 3, 3), 1e-21), padding=1)
    return not bool(product.count_nonzero()) and not bool(conv.count_nonzero())


def ensure_denormals_flushed() -> None:
    """``flush_denormals``, warning once when torch's worker threads started earlier and so keep subnormals."""
    if flush_denormals() and not denormals_flushed():
        log.warning("subnormal floats are flushed on only some CPU threads (torch's threads started before "
                    "epigraf.process_settings.flush_denormals() was called): training may stall when D saturates; call "
                    "it at the start of the process")
