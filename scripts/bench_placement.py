#!/usr/bin/env python3
"""ONNX Runtime CPU latency of one FP32 model's Q/DQ twins under each Q/DQ placement, side by side.

    python scripts/bench_placement.py MODEL.onnx CALIB.npz [--activations uint8] [--batch 64] [--rounds 5]

Writes the model per-channel with MinMax ranges under the tensorrt and the onnxruntime placement,
then builds an ONNX Runtime engine of FP32 and both INT8 models and times them with the shared
harness (engines.bench.measure_latency) in interleaved rounds (each round: every engine for
--seconds), and prints the median over rounds of each round's p50 latency, the ratio to FP32, and
how many Conv nodes ONNX Runtime fused into QLinearConv.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

from calibration.quantize import PLACEMENTS, write_qdq_model  # noqa: E402
from calibration.ranges import calibrate_ranges  # noqa: E402
from engines import build_engine, load_runner  # noqa: E402
from engines.artifacts import load_image_set  # noqa: E402
from engines.bench import measure_latency  # noqa: E402
from engines.onnxruntime.session import create_session  # noqa: E402


def fused_op_counts(model_path: Path, tmp: Path) -> collections.Counter:
    optimized = tmp / f"{model_path.stem}.optimized.onnx"
    create_session(model_path, optimized_model_path=optimized)
    return collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def interleaved_p50(engines: dict[str, Path], batch: int, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Each engine's p50 latency (engines.bench.measure_latency) once per round, engines in turn."""
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        runners = {name: stack.enter_context(load_runner(path)) for name, path in engines.items()}
        for round_index in range(rounds):
            for name, runner in runners.items():
                result = measure_latency(runner, batch, warmup_s=0.2, min_iterations=10, min_duration_s=seconds)
                latencies[name].append(result.p50_ms)
            print(f"round {round_index + 1}/{rounds}", file=sys.stderr, flush=True)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("--activations", default="uint8", help="uint8 (ONNX Runtime on x86) or int8-symmetric")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
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
        latencies = interleaved_p50(engines, args.batch, args.rounds, args.seconds)
        fp32 = statistics.median(latencies["fp32"])
        print(f"batch {args.batch}, {args.activations} activations, per-channel, {args.rounds} interleaved rounds")
        for name, values in latencies.items():
            median = statistics.median(values)
            counts = fused_op_counts(paths[name], tmp)
            print(f"{name:12s} {median:8.2f} ms (rounds {min(values):.2f}-{max(values):.2f}), "
                  f"/ FP32 {median / fp32:.3f}, QLinearConv {counts['QLinearConv']}, "
                  f"float Conv {counts['Conv'] + counts['FusedConv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
