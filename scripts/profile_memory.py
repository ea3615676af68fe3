#!/usr/bin/env python3
"""Training memory of every family, MimicNorm vs its BN twin, measured side by side.

    python scripts/profile_memory.py [--batch 128] [--input-size 32] [--classes 100] [--device cpu|cuda]

For each family at CIFAR-100 shape (the paper's Table), one training step per norm: activation
bytes saved for backward (device-independent), parameter + gradient + optimizer-state bytes, and
on CUDA the peak allocated and reserved bytes and the step time. Prints a Markdown table with
the ratio MimicNorm / BN next to the paper's published memory change where there is one.
"""

from __future__ import annotations

import argparse
import sys

from mimicnorm_deploy.paper import memory_change_percent
from mimicnorm_deploy.training.memory import compare_memory

FAMILIES = ["resnet18", "resnet34", "resnet50", "resnet101", "vgg11", "vgg16", "mobilenetv2_100",
            "shufflenetv2_050", "shufflenetv2_100", "squeezenet1_1"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=",".join(FAMILIES))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        print(f"profiling {name} ...", file=sys.stderr, flush=True)
        result = compare_memory(name, args.batch, args.input_size, 3, args.classes, args.device, timed_steps=5)
        rows.append((name, result))
    cuda = any("cuda_peak_allocated_bytes" in r["norms"]["mimic"] for _, r in rows)
    header = "| model | activations BN MiB | activations MimicNorm MiB | ratio | params+grads+momentum MiB"
    header += " | CUDA peak alloc ratio | step time ratio |" if cuda else " |"
    print(f"\nbatch {args.batch}, {args.input_size}x{args.input_size}x3, {args.classes} classes, {args.device}\n")
    print(header + " paper (CIFAR-100, nvidia-smi) |")
    print("|" + "---|" * (header.count("|") - 1 + 1))
    for name, r in rows:
        mimic, bn = r["norms"]["mimic"], r["norms"]["bn"]
        state = (mimic["parameter_bytes"] + mimic["gradient_bytes"] + mimic["optimizer_state_bytes"]) / 2**20
        line = (f"| {name} | {bn['activation_bytes'] / 2**20:.1f} | {mimic['activation_bytes'] / 2**20:.1f} "
                f"| {r['ratios']['activation_bytes']:.3f} | {state:.1f}")  # fmt: skip
        if cuda:
            line += (f" | {r['ratios'].get('cuda_peak_allocated_bytes', float('nan')):.3f}"
                     f" | {r['ratios'].get('step_ms_p50', float('nan')):.3f}")  # fmt: skip
        paper = memory_change_percent(name)
        print(line + f" | {'' if paper is None else f'{paper:+.1f}%'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
