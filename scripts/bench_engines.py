#!/usr/bin/env python3
"""Re-time every engine of a run in interleaved rounds and print the run's latency ratios.

    python scripts/bench_engines.py RUN_DIR [--rounds 5] [--duration 5] [--batch-sizes 1,64|sweep]

Writes RUN_DIR/rebench/NORM/VARIANT.json (the run's own bench JSONs, with their accuracy, stay
as they are) and prints `mimicnorm-deploy compare RUN_DIR/rebench`: MimicNorm / BN-folded at each
variant and each variant / FP32, as ratios of medians with 95 % bootstrap intervals. Run it on
an otherwise idle machine: other load in the same rounds widens every interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.bench import SWEEP_BATCH_SIZES, BenchPlan  # noqa: E402
from mimicnorm_deploy.compare import compare_sources, render_markdown  # noqa: E402
from mimicnorm_deploy.layout import NORMS_COMPARED, VARIANTS, RunLayout  # noqa: E402
from mimicnorm_deploy.progress import ProgressPrinter  # noqa: E402
from mimicnorm_deploy.stages import bench_stage  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="timed seconds per engine and batch size")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated, or 'sweep'")
    args = parser.parse_args()
    layout = RunLayout(Path(args.run_dir))
    engines = [(norm, variant) for norm in NORMS_COMPARED for variant in VARIANTS
               if layout.engine(norm, variant).is_dir()]  # fmt: skip
    if not engines:
        print(f"error: no engines under {args.run_dir}; run 'mimicnorm-deploy demo' first", file=sys.stderr)
        return 2
    sweep = args.batch_sizes == "sweep"
    plan = BenchPlan(batch_sizes=SWEEP_BATCH_SIZES if sweep else tuple(int(b) for b in args.batch_sizes.split(",")),
                     rounds=args.rounds, duration_s=args.duration, sweep=sweep)  # fmt: skip
    out = layout.root / "rebench"
    bench_stage([layout.engine(n, v) for n, v in engines], [out / n / f"{v}.json" for n, v in engines], plan=plan,
                progress=ProgressPrinter(sys.stderr))  # fmt: skip
    print(render_markdown(compare_sources([str(out)])), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
