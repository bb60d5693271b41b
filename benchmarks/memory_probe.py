"""What G's training step keeps for its backward, and the resident peaks of its forward and backward.

    python benchmarks/memory_probe.py [--preset ffhq256] [--batch 4] [--steps 2] [--top 12]
    EPIGRAF_NO_MALLOC_TUNING=1 python benchmarks/memory_probe.py ...   # glibc's default allocator: the live peak

For one G loss as ``train()`` computes it (``bench_loop.build``, kimg 0), it walks the autograd graph and sums
the distinct storages that its nodes keep (native ops' ``_saved_*`` and custom functions' ``saved_tensors``),
grouped by the node that reaches each storage first, then runs ``--steps`` forward + backward passes from a
trimmed heap and prints each one's peak RSS (VmHWM, restarted per pass). With the tuned allocator that
``epigraf train`` uses, the peaks include the holes of a heap that never shrinks; with the default allocator,
large blocks are returned at once and the peak is the live memory.
"""

from __future__ import annotations

import argparse
import collections
import os

from bench_loop import build, peak_rss_gib, reset_peak_rss

from epigraf.process_settings import flush_denormals, trim_cpu_heap, tune_cpu_allocator


def kept_for_backward(root) -> tuple[int, collections.Counter]:
    """(bytes of the distinct storages the graph from ``root`` keeps, bytes per first node type and attribute)."""
    import torch

    storages: dict[int, tuple[int, str]] = {}
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        custom = hasattr(node, "saved_tensors") and not type(node).__name__.endswith("Backward0")
        for attr in [a for a in dir(node) if a.startswith("_saved_")] + (["saved_tensors"] if custom else []):
            try:
                value = getattr(node, attr)
            except RuntimeError:  # freed already, or not a tensor attribute
                continue
            for t in value if isinstance(value, tuple | list) else [value]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    storages.setdefault(storage.data_ptr(), (storage.nbytes(), f"{type(node).__name__}.{attr}"))
        stack.extend(next_node for next_node, _ in node.next_functions)
    by_kind = collections.Counter()
    for nbytes, kind in storages.values():
        by_kind[kind] += nbytes
    return sum(by_kind.values()), by_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ffhq256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="node kinds to list")
    args = parser.parse_args()
    flush_denormals()
    tuned = os.environ.get("EPIGRAF_NO_MALLOC_TUNING") != "1" and tune_cpu_allocator()

    import torch

    loss, *_, fresh_inputs = build(args.preset, args.batch, 1, torch.device("cpu"))
    draws = fresh_inputs(0, 0.0)
    loss.G.requires_grad_(True)
    loss.D.requires_grad_(False)
    total, by_kind = kept_for_backward(loss.generator_loss(draws.gall, 0.0).loss.grad_fn)
    print(f"{args.preset}, batch {args.batch}: G's graph keeps {total / 2**30:.3f} GiB (distinct storages)")
    for kind, nbytes in by_kind.most_common(args.top):
        print(f"  {nbytes / 2**20:9.1f} MiB  {kind}")
    print(f"allocator: {'tuned (as epigraf train)' if tuned else 'glibc default'}")
    for step in range(args.steps):
        trim_cpu_heap()
        reset_peak_rss()
        result = loss.generator_loss(draws.gall, 0.0)
        forward = peak_rss_gib()
        reset_peak_rss()
        result.loss.backward()
        loss.G.zero_grad(set_to_none=True)
        print(f"  G step {step}: forward peak {forward:.2f} GiB, backward peak {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
