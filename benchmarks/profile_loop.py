"""Where the training step's time goes, per phase: torch.profiler over steady-state iterations.

    python benchmarks/profile_loop.py [--preset builtin] [--batch 16] [--iterations 3] [--warmup 4]
                                      [--r1-interval 1] [--rows 15] [--timer dispatch|profiler]
                                      [--out benchmarks/results/profile.json]

Builds the step as ``bench_loop.py`` does, runs ``--warmup`` untimed iterations, then times each phase (G, D,
R1) of the next ``--iterations`` separately and prints, per phase, the ops that took the most time (ms per
iteration, share of the phase, calls per iteration), with the page faults (minor / major) and the process's
user / system CPU seconds of the phase, the kernel's share counting allocator and page-fault time.

``--timer dispatch`` (the default) times every aten op as it is dispatched, below autograd, with a wall clock:
what each op costs the step, its output's allocation included. ``--timer profiler`` takes torch.profiler's self
CPU time instead; on the 2-core machines of benchmarks/RESULTS.md it inflated large element-wise ops by 5–15×
(a leaky-ReLU backward over 16 × 16,384 × 32 floats: 65 ms a call under the profiler, 6–11 ms timed at dispatch
and alone). Four warm-up iterations: the first two still fault in new heap pages (benchmarks/RESULTS.md).

With the dispatch timer each phase also gets its convolutions' FLOPs (torch.utils.flop_counter's formulas, the
backward's included) and their rate, beside this machine's fp32 rate for a 2048² matrix product at the same
threads: how far the convolutions are from what the CPU can do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

from bench_loop import build

from epigraf.process_settings import flush_denormals, tune_cpu_allocator


def dispatch_timer():
    """A TorchDispatchMode whose ``ops`` maps each aten op's name to [wall ms, calls, FLOPs] over the ops run inside
    it; the FLOPs are torch.utils.flop_counter's (convolutions and matrix products, their backward included)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class DispatchTimer(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: dict[str, list] = defaultdict(lambda: [0.0, 0, 0])

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            start = time.perf_counter()
            out = func(*args, **kwargs)
            entry = self.ops[f"aten::{func.overloadpacket.__name__}"]
            entry[0] += (time.perf_counter() - start) * 1e3
            entry[1] += 1
            if func.overloadpacket in flop_registry:
                entry[2] += flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
            return out

    return DispatchTimer()


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-product rate at the current threads (median of ``repeats`` size² products): the
    ceiling to read the convolutions' rate against."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / sorted(times)[repeats // 2] / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="builtin")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--r1-interval", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--timer", choices=("dispatch", "profiler"), default="dispatch")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile.json"))
    args = parser.parse_args()
    flush_denormals()
    tune_cpu_allocator()
    import torch
    from torch.profiler import ProfilerActivity, profile

    import epigraf.train.loop as loop

    device = torch.device("cpu")
    loss, G_opt, D_opt, env, G_ema, fresh_inputs = build(args.preset, args.batch, args.r1_interval, device)
    plain_timed_phase = loop.timed_phase
    stats: dict[str, dict] = defaultdict(lambda: {"ops": defaultdict(lambda: [0.0, 0, 0]), "wall": 0.0, "user": 0.0,
                                                  "sys": 0.0, "minflt": 0, "majflt": 0})
    ceiling = matmul_gflops()
    profiling = {"on": False}

    @contextlib.contextmanager
    def profiled_phase(timings, name, dev):
        if not profiling["on"] or name not in ("G", "D", "R1"):
            with plain_timed_phase(timings, name, dev):
                yield
            return
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if args.timer == "dispatch":
            with dispatch_timer() as timer:
                yield
            op_times = timer.ops.items()
        else:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                yield
            op_times = [(e.key, (e.self_cpu_time_total / 1e3, e.count, 0)) for e in prof.key_averages()]
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        s = stats[name]
        s["wall"] += t1 - t0
        s["user"] += r1.ru_utime - r0.ru_utime
        s["sys"] += r1.ru_stime - r0.ru_stime
        s["minflt"] += r1.ru_minflt - r0.ru_minflt
        s["majflt"] += r1.ru_majflt - r0.ru_majflt
        for key, values in op_times:
            for i, value in enumerate(values):
                s["ops"][key][i] += value

    loop.timed_phase = profiled_phase
    for step in range(args.warmup + args.iterations):
        profiling["on"] = step >= args.warmup
        loop.training_step(loss, fresh_inputs(step, 0.0), 0.0, step, G_opt, D_opt, env, args.r1_interval,
                           contextlib.nullcontext(), {})
    n = args.iterations
    report = {"preset": args.preset, "batch": args.batch, "threads": torch.get_num_threads(), "timer": args.timer,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_average": os.getloadavg(),
              "matmul_gflops": ceiling, "phases": {}}
    print(f"{args.preset}, batch {args.batch}, {report['threads']} threads, {report['cpu_capability']}, {args.timer} "
          f"timer, "
          f"load {' '.join(f'{v:.1f}' for v in os.getloadavg())}; per iteration, mean of {n}; fp32 matrix products "
          f"(2048²) run at {ceiling:.0f} GFLOP/s here")
    for name, s in stats.items():
        total = sum(v[0] for v in s["ops"].values())
        top = sorted(s["ops"].items(), key=lambda kv: -kv[1][0])[: args.rows]
        conv = [v for k, v in s["ops"].items() if k.startswith("aten::convolution")]
        conv_ms, conv_flops = sum(v[0] for v in conv), sum(v[2] for v in conv)
        print(f"\n{name}: wall {s['wall'] / n:.2f} s (profiled), user {s['user'] / n:.2f} s, sys {s['sys'] / n:.2f} s, "
              f"minor faults {s['minflt'] / n:.0f}, major {s['majflt'] / n:.0f}; op self time {total / n:.0f} ms")
        if conv_flops:
            print(f"  convolutions (forward and backward): {conv_ms / n:.0f} ms, {conv_flops / n / 1e9:.1f} GFLOP, "
                  f"{conv_flops / conv_ms / 1e6:.0f} GFLOP/s ({conv_flops / conv_ms / 1e6 / ceiling:.0%} of the matrix "
                  f"products' rate)")
        for key, (ms, calls, flops) in top:
            rate = f" {flops / ms / 1e6:6.0f} GFLOP/s" if flops else ""
            print(f"  {key:40s} {ms / n:9.1f} ms {100 * ms / total:5.1f} % {calls / n:8.0f} calls{rate}")
        report["phases"][name] = {k: v for k, v in s.items() if k != "ops"} | {
            "convolution_ms": conv_ms / n, "convolution_gflop": conv_flops / n / 1e9,
            "top": [[k, ms / n, calls / n, flops / n / 1e9] for k, (ms, calls, flops) in top]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
