#!/usr/bin/env python3
"""ONNX Runtime CPU latency of one FP32 model's Q/DQ twins under each Q/DQ placement, side by side.

    python scripts/bench_placement.py MODEL.onnx CALIB.npz [--activations uint8] [--batch 64] [--rounds 5]

Writes the model per-channel with MinMax ranges under the tensorrt and the onnxruntime placement,
then times FP32 and both INT8 models in interleaved rounds (each round: every model for --seconds),
and prints the median p50-per-run latency, the ratio to FP32, and how many Conv nodes ONNX Runtime
fused into QLinearConv.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from calibration.quantize import PLACEMENTS, write_qdq_model  # noqa: E402
from calibration.ranges import calibrate_ranges  # noqa: E402
from engines.artifacts import load_image_set  # noqa: E402


def fused_op_counts(model_path: Path, tmp: Path) -> collections.Counter:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / f"{model_path.stem}.optimized.onnx")
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


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
    batch = images[: args.batch]
    with tempfile.TemporaryDirectory(prefix="bench-placement.") as tmp_dir:
        tmp = Path(tmp_dir)
        paths = {"fp32": Path(args.model)}
        for placement in PLACEMENTS:
            paths[placement] = tmp / f"{placement}.onnx"
            write_qdq_model(args.model, ranges, paths[placement], per_channel=True, activations=args.activations,
                            placement=placement)  # fmt: skip
        sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    for name, path in paths.items()}  # fmt: skip
        input_name = sessions["fp32"].get_inputs()[0].name
        latencies: dict[str, list[float]] = collections.defaultdict(list)
        for round_index in range(args.rounds):
            for name, session in sessions.items():
                session.run(None, {input_name: batch})  # warm-up
                started, runs = time.perf_counter(), 0
                while time.perf_counter() - started < args.seconds:
                    session.run(None, {input_name: batch})
                    runs += 1
                latencies[name].append(1000 * (time.perf_counter() - started) / runs)
            print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
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
