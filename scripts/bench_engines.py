#!/usr/bin/env python3
"""Latency ratios between the engines of a run, measured side by side, with their spread.

    python scripts/bench_engines.py RUN_DIR [--rounds 5] [--seconds 1.0] [--batch-sizes 1,64]

Engines are measured in interleaved rounds (every engine once per round, in a rotating order),
so slow drift of the machine (thermal, other load) hits all of them alike. Each ratio is given
as the median over rounds of the per-round ratio of p50 latencies, with its min-max across
rounds. Prints INT8 / FP32 per model and MimicNorm / BN-folded per engine variant.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

from engines import load_runner
from engines.bench import measure_latency
from mimicnorm_deploy.layout import NORMS_COMPARED, VARIANTS, RunLayout


def measure_rounds(runners: dict, batch_sizes: list[int], rounds: int, seconds: float) -> dict:
    """p50 latencies per (norm, variant, batch), one per round, engines in a rotating order."""
    keys = list(runners)
    p50: dict[tuple[str, str, int], list[float]] = {(*key, b): [] for key in keys for b in batch_sizes}
    for round_index in range(rounds):
        order = keys[round_index % len(keys) :] + keys[: round_index % len(keys)]
        for key in order:
            for batch in batch_sizes:
                result = measure_latency(runners[key], batch, warmup_s=0.2, min_iterations=10, min_duration_s=seconds)
                p50[(*key, batch)].append(result.p50_ms)
        print(f"round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per engine per round")
    parser.add_argument("--batch-sizes", default="1,64")
    args = parser.parse_args()
    layout = RunLayout(Path(args.run_dir))
    engines = {
        (norm, variant): layout.engine(norm, variant)
        for norm in NORMS_COMPARED for variant in VARIANTS if layout.engine(norm, variant).is_dir()
    }  # fmt: skip
    if not engines:
        print(f"error: no engines under {args.run_dir}; run 'mimicnorm-deploy demo' first", file=sys.stderr)
        return 2
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with contextlib.ExitStack() as stack:
        p50 = measure_rounds({key: stack.enter_context(load_runner(path)) for key, path in engines.items()},
                             batch_sizes, args.rounds, args.seconds)  # fmt: skip
    keys = list(engines)

    def ratio_text(a: tuple[str, str, int], b: tuple[str, str, int]) -> str:
        ratios = [x / y for x, y in zip(p50[a], p50[b], strict=True)]
        return f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"

    print(f"p50 latency ratios, median over {args.rounds} interleaved rounds (min-max across rounds)")
    for batch in batch_sizes:
        print(f"\nbatch {batch}:")
        for norm in NORMS_COMPARED:
            for variant in VARIANTS[1:]:
                if (norm, variant, batch) in p50 and (norm, "fp32", batch) in p50:
                    print(f"  {norm:5s} {variant} / fp32: {ratio_text((norm, variant, batch), (norm, 'fp32', batch))}")
        for variant in VARIANTS:
            if ("mimic", variant, batch) in p50 and ("bn", variant, batch) in p50:
                print(f"  mimic / bn {variant}: {ratio_text(('mimic', variant, batch), ('bn', variant, batch))}")
        for key in keys:
            values = p50[(*key, batch)]
            print(f"  {key[0]:5s} {key[1]:17s} p50 {statistics.median(values):.3f} ms "
                  f"(rounds: {', '.join(f'{v:.3f}' for v in values)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
