"""Whether a change to the networks changes what a training step computes: every gradient of a G step and an R1
step (its double backward included), saved by one checkout and compared bitwise with another's.

    PYTHONPATH=/path/to/other/checkout/src python benchmarks/compare_gradients.py save /tmp/before.pt
    python benchmarks/compare_gradients.py save /tmp/after.pt
    python benchmarks/compare_gradients.py compare /tmp/before.pt /tmp/after.pt

Uses ``bench_loop.build`` (seed 0, the presets ``builtin`` at batch 4 and ``ffhq256`` at batch 1, kimg 0).
Prints, per preset, how many tensors differ and the largest relative difference.
"""

from __future__ import annotations

import argparse

import torch
from bench_loop import build

CASES = (("builtin", 4), ("ffhq256", 1))


def gradients() -> dict[str, dict[str, torch.Tensor]]:
    """{preset: {name: tensor}}: the G loss, the R1 loss, and every parameter gradient of each step."""
    result = {}
    for preset, batch in CASES:
        loss, *_, fresh_inputs = build(preset, batch, 1, torch.device("cpu"))
        draws = fresh_inputs(0, 0.0)
        G, D = loss.G, loss.D
        g = loss.generator_loss(draws.gall, 0.0)
        g.loss.backward()
        out = {f"G.{n}": p.grad.clone() for n, p in G.named_parameters() if p.grad is not None}
        r1 = loss.r1_loss(draws.real, draws.dreg_real_patch, 0.0, 1)
        r1.loss.backward()
        out.update({f"R1.{n}": p.grad.clone() for n, p in D.named_parameters() if p.grad is not None})
        out.update({"loss/G": g.loss.detach(), "loss/R1": r1.loss.detach()})
        result[preset] = out
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save").add_argument("path")
    compare = sub.add_parser("compare")
    compare.add_argument("before")
    compare.add_argument("after")
    args = parser.parse_args()
    if args.command == "save":
        torch.save(gradients(), args.path)
        return
    before, after = torch.load(args.before), torch.load(args.after)
    for preset, a in before.items():
        b = after[preset]
        if a.keys() != b.keys():
            print(f"{preset}: different tensors: {sorted(set(a) ^ set(b))}")
            continue
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        worst = max((float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)) for k in differ),
                    default=0.0)
        print(f"{preset}: {len(a)} tensors, {len(differ)} not bitwise equal (largest relative difference {worst:.2e})")


if __name__ == "__main__":
    main()
