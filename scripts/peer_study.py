#!/usr/bin/env python3
"""The peer study: this toolkit's INT8 beside ONNX Runtime's `quantize_static` defaults and NVIDIA's
Model Optimizer (modelopt), on the same FP32 models and calibration images.

    python scripts/peer_study.py MODEL.onnx [MODEL.onnx ...] --calib calib.npz --test test.npz
        [--calibration-images 512] [--methods minmax,entropy] [--modelopt-python /path/to/venv/bin/python]
        [--out runs/peer]

For every model, scored on the labelled test set:
- FP32;
- ours, per-channel, MinMax and entropy (TensorRT's EntropyCalibration2) ranges: written for
  `desktop-gpu` (TensorRT's encoding, FP16 outside INT8) with Q/DQ simulated in float, the same
  with the classifier (the last layer, a Gemm/MatMul) left in FP16 as modelopt leaves it, and for
  `cpu` (this machine's encoding) with ONNX Runtime's INT8 kernels and simulated;
- `quantize_static` with every default (per-tensor MinMax, uint8 activations), kernels and simulated;
- modelopt's `modelopt.onnx.quantization.quantize` (int8, per-channel, FP16 outside INT8) with its
  `max` and `entropy` calibration, simulated, when --modelopt-python names an interpreter that has
  `nvidia-modelopt[onnx]` (not a dependency of this project: install it in a separate venv).
Plus, for each: the calibration's process CPU time, all threads (ours: ranges + writing one
target's model; modelopt: its `quantize` call, in its own process; quantize_static: its call), not
wall time, which on a shared machine says more about the neighbours than the method; and the
Q/DQ nodes per op type of the reader (`activation:Conv` = dequantized activations read by a
Conv, `weight:Conv` = dequantized weights).

Accuracies do not depend on what else the machine runs. The first `--calibration-images` images
of the calibration set calibrate every method. Results: `<out>/peer_study.json` and `<out>/peer_study.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.artifacts import load_image_set, write_json  # noqa: E402
from engines.errors import UserError  # noqa: E402
from engines.schemas import PEER_STUDY  # noqa: E402

OURS_METHODS = ("minmax", "entropy")
MODELOPT_METHODS = ("max", "entropy")
# Run inside the modelopt interpreter: quantize, then print the wall time of the call as the last line.
MODELOPT_SCRIPT = """
import json, sys, time
import numpy as np
from modelopt.onnx.quantization import quantize
model, data, method, out = sys.argv[1:5]
started = time.perf_counter()
quantize(model, quantize_mode="int8", calibration_data=np.load(data), calibration_method=method,
         calibration_eps=["cpu"], output_path=out, high_precision_dtype="fp16")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def logits(model_path: str | Path, images, *, kernels: bool = False):
    """ONNX Runtime CPU logits: Q/DQ simulated in float, or (kernels) fused into its INT8 kernels."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not kernels:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 500]})[0] for i in range(0, len(images), 500)])


def qdq_counts(model_path: str | Path) -> dict[str, int]:
    """DequantizeLinear outputs by reader: `weight:<op>` when the quantized tensor is a constant (an
    int8 initializer, or a float one behind its QuantizeLinear, as modelopt writes weights),
    `activation:<op>` otherwise."""
    import onnx

    model = onnx.load(str(model_path))
    producers = {output: node for node in model.graph.node for output in node.output}
    constants = {init.name for init in model.graph.initializer}

    def constant(name: str) -> bool:
        node = producers.get(name)
        if node is None:
            return name in constants
        return node.op_type == "Constant" or (node.op_type in ("QuantizeLinear", "Cast") and constant(node.input[0]))

    dequantized = {node.output[0]: "weight" if constant(node.input[0]) else "activation"
                   for node in model.graph.node if node.op_type == "DequantizeLinear"}  # fmt: skip
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in dequantized:
                key = f"{dequantized[name]}:{node.op_type}"
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def score(model_path: Path, test, *, kernels: bool) -> dict:
    from calibration.metrics import accuracy

    images, labels = test
    result = {"simulated": accuracy(logits(model_path, images), labels), "qdq": qdq_counts(model_path)}
    result["kernels"] = accuracy(logits(model_path, images, kernels=True), labels) if kernels else None
    return result


def classifier(model: Path) -> str | None:
    """The name of the last quantizable layer when it is a Gemm/MatMul (the classifier), else None."""
    import onnx

    from calibration.qdq import quantizable_layers

    last = quantizable_layers(onnx.load(str(model)))[-1]
    return last.name if last.op_type in ("Gemm", "MatMul") else None


def ours(model: Path, calib, test, tmp: Path, methods: list[str], say) -> dict:
    from calibration.plan import write_int8_model
    from calibration.ranges import calibrate_ranges
    from calibration.targets import encoding_for

    head = classifier(model)
    writes = [("desktop-gpu", ()), ("cpu", ())] + ([("desktop-gpu", (head,))] if head else [])
    results = {}
    for method in methods:
        started = time.process_time()
        ranges = calibrate_ranges(model, calib, method)
        ranges_seconds = time.process_time() - started
        for target, float_layers in writes:
            encoding = encoding_for(target)
            key = f"ours {method}, {target}" + (", classifier float" if float_layers else "")
            path = tmp / (key.replace(" ", "-").replace(",", "") + ".onnx")
            started = time.process_time()
            write_int8_model(model, ranges, path, high_precision=encoding.high_precision, per_channel=True,
                             high_precision_layers=float_layers, **encoding.qdq_options)  # fmt: skip
            cpu_seconds = ranges_seconds + time.process_time() - started
            results[key] = {**score(path, test, kernels=target == "cpu"), "cpu_seconds": cpu_seconds}
            say(f"{key}: {_describe(results[key])}")
    return results


def quantize_static_defaults(model: Path, calib, test, tmp: Path, say) -> dict:
    import onnx
    from onnxruntime.quantization import quantize_static

    from calibration.data import ArrayCalibrationReader
    from calibration.inputs import image_input

    path = tmp / "quantize-static.onnx"
    input_name = image_input(onnx.load(str(model)), model)[0]
    started = time.process_time()
    quantize_static(str(model), str(path), ArrayCalibrationReader(calib, input_name, 32))
    cpu_seconds = time.process_time() - started
    result = {**score(path, test, kernels=True), "cpu_seconds": cpu_seconds}
    say(f"quantize_static defaults: {_describe(result)}")
    return {"quantize_static defaults": result}


def modelopt(model: Path, calib, test, tmp: Path, python: str, say) -> dict:
    import numpy as np

    data = tmp / "calib.npy"
    np.save(data, calib)
    results = {}
    for method in MODELOPT_METHODS:
        path = tmp / f"modelopt-{method}.onnx"
        run = subprocess.run([python, "-c", MODELOPT_SCRIPT, str(model), str(data), method, str(path)],
                             capture_output=True, text=True)  # fmt: skip
        if run.returncode != 0:
            raise UserError(f"modelopt ({python}) failed on {model.name}: {run.stderr.strip().splitlines()[-1:]}")
        seconds = json.loads(run.stdout.strip().splitlines()[-1])["seconds"]
        key = f"modelopt {method}"
        results[key] = {**score(path, test, kernels=False), "seconds": seconds}
        say(f"{key}: {_describe(results[key])}")
    return results


def _describe(result: dict) -> str:
    kernels = "" if result["kernels"] is None else f", kernels {100 * result['kernels']:.2f}%"
    return (f"{100 * result['simulated']:.2f}% simulated{kernels}, {result['cpu_seconds']:.1f} s CPU, "
            f"Q/DQ {result['qdq']}")  # fmt: skip


def study_model(model: Path, calib, test, methods: list[str], modelopt_python: str | None, say) -> dict:
    from calibration.metrics import accuracy

    fp32 = accuracy(logits(model, test[0]), test[1])
    say(f"FP32 {100 * fp32:.2f}%")
    with tempfile.TemporaryDirectory(prefix="peer-study.") as tmp_dir:
        tmp = Path(tmp_dir)
        variants = {**ours(model, calib, test, tmp, methods, say),
                    **quantize_static_defaults(model, calib, test, tmp, say)}  # fmt: skip
        if modelopt_python:
            variants.update(modelopt(model, calib, test, tmp, modelopt_python, say))
    return {"model": str(model), "fp32": fp32, "variants": variants}


def versions(modelopt_python: str | None) -> dict:
    import numpy
    import onnx
    import onnxruntime

    found = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": numpy.__version__,
             "python": sys.version.split()[0]}  # fmt: skip
    if modelopt_python:
        run = subprocess.run([modelopt_python, "-c", "import modelopt; print(modelopt.__version__)"],
                             capture_output=True, text=True)  # fmt: skip
        found["modelopt"] = run.stdout.strip() or None
    return found


def render(study: dict) -> str:
    keys = list(dict.fromkeys(key for row in study["models"] for key in row["variants"]))
    lines = ["| model | FP32 | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for row in study["models"]:
        cells = []
        for key in keys:
            variant = row["variants"].get(key)
            if variant is None:
                cells.append("")
                continue
            kernels = "" if variant["kernels"] is None else f" / {100 * variant['kernels']:.2f}"
            cells.append(f"{100 * variant['simulated']:.2f}{kernels}")
        lines.append(f"| {row['model']} | {100 * row['fp32']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Test accuracy %: simulated / with ONNX Runtime's INT8 kernels where they run the encoding.", "",
              "| model | variant | calibration CPU s | Q/DQ readers |", "|---|---|---|---|"]  # fmt: skip
    for row in study["models"]:
        for key, variant in row["variants"].items():
            counts = ", ".join(f"{name} {n}" for name, n in variant["qdq"].items())
            lines.append(f"| {Path(row['model']).parent} | {key} | {variant['cpu_seconds']:.1f} | {counts} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="FP32 ONNX models from export")
    parser.add_argument("--calib", required=True, help="calibration image set (.npz)")
    parser.add_argument("--test", required=True, help="labelled test image set (.npz)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--methods", default=",".join(OURS_METHODS), help="our range methods to run")
    parser.add_argument("--modelopt-python", help="a Python with nvidia-modelopt[onnx] installed")
    parser.add_argument("--out", default="runs/peer", type=Path)
    args = parser.parse_args(argv)
    try:
        calib = load_image_set(args.calib)[0][: args.calibration_images]
        test = load_image_set(args.test)
        if test[1] is None:
            raise UserError(f"{args.test}: no labels; pass the labelled test set written by prepare-data")
        rows = []
        for model in args.models:
            rows.append(study_model(model, calib, test, args.methods.split(","), args.modelopt_python,
                                    lambda message, name=model: print(f"[{name}] {message}", flush=True)))  # fmt: skip
        study = {"calibration_images": len(calib), "test_images": len(test[0]),
                 "versions": versions(args.modelopt_python), "models": rows}  # fmt: skip
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "peer_study.json", *PEER_STUDY, study)
    (args.out / "peer_study.md").write_text(render(study))
    print(render(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
