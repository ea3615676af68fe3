#!/usr/bin/env python3
"""ONNX Runtime CPU latency of one FP32 model's Q/DQ twins under each Q/DQ placement, side by side.

    python scripts/bench_placement.py MODEL.onnx CALIB.npz [--activations uint8] [--batch 64] [--rounds 5]

Writes the model per-channel with MinMax ranges under the tensorrt and the onnxruntime placement,
builds an ONNX Runtime engine of each and of the FP32 model, times them in interleaved rounds with
the library's harness (engines.bench.bench_engines), and prints each one's median latency over all
timed inferences, its ratio to FP32 with a 95 % bootstrap interval, and how many Conv nodes ONNX
Runtime fused into QLinearConv.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

from calibration.quantize import PLACEMENTS, write_qdq_model  # noqa: E402
from calibration.ranges import calibrate_ranges  # noqa: E402
from engines import build_engine  # noqa: E402
from engines.artifacts import load_image_set  # noqa: E402
from engines.bench import BenchPlan, LatencyResult, bench_engines  # noqa: E402
from engines.onnxruntime.session import create_session  # noqa: E402
from mimicnorm_deploy.latency_stats import ratio_of_medians  # noqa: E402
from mimicnorm_deploy.progress import ProgressPrinter  # noqa: E402


def fused_op_counts(model_path: Path, tmp: Path) -> collections.Counter:
    optimized = tmp / f"{model_path.stem}.optimized.onnx"
    create_session(model_path, optimized_model_path=optimized)
    return collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("--activations", default="uint8", help="uint8 (ONNX Runtime on x86) or int8-symmetric")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per model per round")
    args = parser.parse_args()
    images, _ = load_image_set(args.calib)
    ranges = calibrate_ranges(args.model, images)
    with tempfile.TemporaryDirectory(prefix="bench-placement.") as tmp_dir:
        tmp = Path(tmp_dir)
        paths = {"fp32": Path(args.model)}
        for placement in PLACEMENTS:
            paths[placement] = tmp / f"{placement}.onnx"
            write_qdq_model(args.model, ranges, paths[placement], per_channel=True, activations=args.activations,
                            placement=placement)  # fmt: skip
        engines = {name: tmp / "engines" / name for name in paths}
        for name, path in paths.items():
            build_engine(path, engines[name])
        plan = BenchPlan(batch_sizes=(args.batch,), rounds=args.rounds, duration_s=args.seconds * args.rounds)
        records = bench_engines(list(engines.values()), plan, memory=False, progress=ProgressPrinter(sys.stderr))
        latency = {name: LatencyResult.from_dict(record["latency"][0]) for name, record in zip(engines, records,
                                                                                              strict=True)}  # fmt: skip
        fp32 = latency["fp32"]
        print(f"batch {args.batch}, {args.activations} activations, per-channel, {args.rounds} interleaved rounds; "
              "median of all timed inferences, ratio to FP32 with a 95 % bootstrap interval")  # fmt: skip
        for name, result in latency.items():
            ratio = ratio_of_medians(result.samples_ms, fp32.samples_ms, rounds_a=result.rounds,
                                     rounds_b=fp32.rounds, paired=True)  # fmt: skip
            counts = fused_op_counts(paths[name], tmp)
            print(f"{name:12s} median {result.p50_ms:8.2f} ms (p90 {result.p90_ms:.2f}, {result.iterations} runs), "
                  f"/ FP32 {ratio.describe()}, QLinearConv {counts['QLinearConv']}, "
                  f"float Conv {counts['Conv'] + counts['FusedConv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
