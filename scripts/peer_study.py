#!/usr/bin/env python3
"""The peer study: this toolkit's INT8 beside ONNX Runtime's `quantize_static` defaults and NVIDIA's
Model Optimizer (modelopt), on the same FP32 models and calibration images.

    python scripts/peer_study.py MODEL.onnx [MODEL.onnx ...] --calib calib.npz --test test.npz
        [--calibration-images 512] [--test-images N] [--methods minmax,entropy] [--tensorrt-only]
        [--modelopt-python /path/to/venv/bin/python] [--out runs/peer]

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
Conv, `weight:Conv` = dequantized weights, `bias:Conv` = dequantized biases).

Accuracies do not depend on what else the machine runs. The first `--calibration-images` images
of the calibration set calibrate every method; `--test-images N` scores on the first N test
images only (a quick look); `--tensorrt-only` skips the `cpu` and quantize_static columns (each
costs two passes over the test set: kernels and simulated).

Results: `<out>/peer_study.json` (written after every model; a later run into the same --out
keeps the earlier models that it does not re-run), `<out>/peer_study.md`, and every quantized
model under `<out>/models/<arch>-<norm>-<seed>/`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.artifacts import load_image_set, read_json, write_json  # noqa: E402
from engines.errors import UserError  # noqa: E402
from engines.schemas import PEER_STUDY  # noqa: E402

OURS_METHODS = ("minmax", "entropy")
MODELOPT_METHODS = ("max", "entropy")
# Run inside the modelopt interpreter: quantize, then print the CPU time of the call as the last line.
MODELOPT_SCRIPT = """
import json, sys, time
import numpy as np
from modelopt.onnx.quantization import quantize
model, data, method, out = sys.argv[1:5]
started = time.process_time()
quantize(model, quantize_mode="int8", calibration_data=np.load(data), calibration_method=method,
         calibration_eps=["cpu"], output_path=out, high_precision_dtype="fp16")
print(json.dumps({"cpu_seconds": time.process_time() - started}))
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
    `bias:<op>` for a Conv/Gemm's third input (quantize_static's int32 biases), `activation:<op>`
    otherwise."""
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
        for index, name in enumerate(node.input):
            if name in dequantized:
                kind = "bias" if index == 2 and node.op_type in ("Conv", "Gemm") else dequantized[name]
                key = f"{kind}:{node.op_type}"
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def activation_amax(model_path: str | Path) -> dict[str, float]:
    """amax (scale x 127) of every activation a QuantizeLinear quantizes, by the float tensor's name
    (behind a Cast, for FP16 graphs); symmetric int8 only."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    amax = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue
        source = node.input[0]
        while source in producers and producers[source].op_type == "Cast":
            source = producers[source].input[0]
        amax[source] = float(numpy_helper.to_array(initializers[node.input[1]]).astype("float64").max()) * 127
    return amax


def compare_amax(ours_model: Path, peer_model: Path) -> dict:
    """Per shared tensor (ours amax, peer amax), and the ratio's spread."""
    import numpy as np

    ours_amax, peer_amax = activation_amax(ours_model), activation_amax(peer_model)
    shared = [name for name in ours_amax if name in peer_amax and peer_amax[name] > 0]
    ratios = np.array([ours_amax[name] / peer_amax[name] for name in shared])
    return {"tensors": {name: [ours_amax[name], peer_amax[name]] for name in shared},
            "ratio_min": float(ratios.min()), "ratio_median": float(np.median(ratios)),
            "ratio_max": float(ratios.max())} if shared else {"tensors": {}}  # fmt: skip


def score(model_path: Path, test, *, kernels: bool) -> dict:
    """Accuracy simulated (and with ONNX Runtime's kernels); the simulated top-1 of every test image
    goes to `<model>.top1.npy` beside the model, for paired comparisons."""
    import numpy as np

    from calibration.metrics import accuracy

    images, labels = test
    simulated = logits(model_path, images)
    np.save(model_path.with_suffix(".top1.npy"), simulated.argmax(axis=1).astype(np.int16))
    result = {"simulated": accuracy(simulated, labels), "qdq": qdq_counts(model_path)}
    result["kernels"] = accuracy(logits(model_path, images, kernels=True), labels) if kernels else None
    return result


def paired(ours_top1, peer_top1, labels) -> dict:
    """Images only one of two models gets right, and the exact two-sided sign test (McNemar's) of
    their difference: the chance of a split at least this uneven if both were equally accurate."""
    import numpy as np

    ours_right, peer_right = ours_top1 == labels, peer_top1 == labels
    ours_only, peer_only = int(np.sum(ours_right & ~peer_right)), int(np.sum(peer_right & ~ours_right))
    n, k = ours_only + peer_only, min(ours_only, peer_only)
    p_value = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"ours_only_right": ours_only, "peer_only_right": peer_only, "p_value": p_value}


def classifier(model: Path) -> str | None:
    """The name of the last quantizable layer when it is a Gemm/MatMul (the classifier), else None."""
    import onnx

    from calibration.qdq import quantizable_layers

    last = quantizable_layers(onnx.load(str(model)))[-1]
    return last.name if last.op_type in ("Gemm", "MatMul") else None


def variant_path(directory: Path, key: str) -> Path:
    """Where the model of variant `key` ("ours entropy, desktop-gpu") is kept: ours-entropy-desktop-gpu.onnx."""
    return directory / (key.replace(",", "").replace(" ", "-") + ".onnx")


def ours(model: Path, calib, test, tmp: Path, methods: list[str], cpu: bool, say) -> dict:
    from calibration.plan import write_int8_model
    from calibration.ranges import calibrate_ranges
    from calibration.targets import encoding_for

    head = classifier(model)
    writes = [("desktop-gpu", ())] + ([("desktop-gpu", (head,))] if head else []) + ([("cpu", ())] if cpu else [])
    results = {}
    for method in methods:
        started = time.process_time()
        ranges = calibrate_ranges(model, calib, method)
        ranges_seconds = time.process_time() - started
        for target, float_layers in writes:
            encoding = encoding_for(target)
            key = f"ours {method}, {target}" + (", classifier float" if float_layers else "")
            path = variant_path(tmp, key)
            started = time.process_time()
            try:
                write_int8_model(model, ranges, path, high_precision=encoding.high_precision, per_channel=True,
                                 high_precision_layers=float_layers, **encoding.qdq_options)  # fmt: skip
            except UserError as exc:  # e.g. activations beyond FP16: a result of this model, not a failed study
                results[key] = {"error": str(exc)}
            else:
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
        path = variant_path(tmp, f"modelopt {method}")
        run = subprocess.run([python, "-c", MODELOPT_SCRIPT, str(model), str(data), method, str(path)],
                             capture_output=True, text=True)  # fmt: skip
        key = f"modelopt {method}"
        if run.returncode != 0:
            results[key] = {"error": f"modelopt failed: {' '.join(run.stderr.strip().splitlines()[-1:])}"}
        else:
            cpu_seconds = json.loads(run.stdout.strip().splitlines()[-1])["cpu_seconds"]
            results[key] = {**score(path, test, kernels=False), "cpu_seconds": cpu_seconds}
        say(f"{key}: {_describe(results[key])}")
    return results


def _describe(result: dict) -> str:
    if "error" in result:
        return f"refused: {result['error']}"
    kernels = "" if result["kernels"] is None else f", kernels {100 * result['kernels']:.2f}%"
    return (f"{100 * result['simulated']:.2f}% simulated{kernels}, {result['cpu_seconds']:.1f} s CPU, "
            f"Q/DQ {result['qdq']}")  # fmt: skip


def model_tag(model: Path) -> str:
    """`<arch>-<norm>-<seed>` for the int8 study's layout (`<arch>/<norm>/seed<k>/model.onnx`)."""
    return "-".join(model.resolve().parent.parts[-3:])


def study_model(model: Path, calib, test, args: argparse.Namespace, keep: Path, say) -> dict:
    import numpy as np

    from calibration.metrics import accuracy

    fp32 = accuracy(logits(model, test[0]), test[1])
    say(f"FP32 {100 * fp32:.2f}%")
    keep.mkdir(parents=True, exist_ok=True)
    variants = ours(model, calib, test, keep, args.methods.split(","), not args.tensorrt_only, say)
    if not args.tensorrt_only:
        variants.update(quantize_static_defaults(model, calib, test, keep, say))
    row = {"model": str(model), "fp32": fp32, "variants": variants, "amax_vs_modelopt": {}, "paired_vs_modelopt": {}}
    if args.modelopt_python:
        variants.update(modelopt(model, calib, test, keep, args.modelopt_python, say))
        for ours_method, peer_method in (("minmax", "max"), ("entropy", "entropy")):
            peer_key = f"modelopt {peer_method}"
            ours_key = f"ours {ours_method}, desktop-gpu"
            if "error" in variants.get(ours_key, {"error": None}) or "error" in variants[peer_key]:
                continue
            comparison = compare_amax(variant_path(keep, ours_key), variant_path(keep, peer_key))
            row["amax_vs_modelopt"][f"ours {ours_method} / modelopt {peer_method}"] = comparison
            say(f"amax, ours {ours_method} / modelopt {peer_method}: {_describe_ratio(comparison)}")
            for key in (ours_key, f"{ours_key}, classifier float"):
                if key in variants and "error" not in variants[key]:
                    flips = paired(*(np.load(variant_path(keep, k).with_suffix(".top1.npy")) for k in (key, peer_key)),
                                   test[1])  # fmt: skip
                    row["paired_vs_modelopt"][f"{key} vs {peer_key}"] = flips
                    say(f"{key} vs {peer_key}: {_describe_flips(flips)}")
    return row


def _describe_flips(flips: dict) -> str:
    return (f"{flips['ours_only_right']} images only ours gets right, {flips['peer_only_right']} only modelopt, "
            f"sign test p = {flips['p_value']:.2f}")  # fmt: skip


def _describe_ratio(comparison: dict) -> str:
    if not comparison["tensors"]:
        return "no shared tensor"
    return (f"{comparison['ratio_min']:.3f} / {comparison['ratio_median']:.3f} / {comparison['ratio_max']:.3f} "
            f"(min / median / max over {len(comparison['tensors'])} tensors)")  # fmt: skip


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
            if variant is None or "error" in variant:
                cells.append("" if variant is None else "refused")
                continue
            kernels = "" if variant["kernels"] is None else f" / {100 * variant['kernels']:.2f}"
            cells.append(f"{100 * variant['simulated']:.2f}{kernels}")
        lines.append(f"| {model_tag(Path(row['model']))} | {100 * row['fp32']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Test accuracy %: simulated / with ONNX Runtime's INT8 kernels where they run the encoding.", "",
              "| model | variant | calibration CPU s | Q/DQ readers |", "|---|---|---|---|"]  # fmt: skip
    for row in study["models"]:
        for key, variant in row["variants"].items():
            if "error" in variant:
                lines.append(f"| {model_tag(Path(row['model']))} | {key} | | refused: {variant['error']} |")
                continue
            counts = ", ".join(f"{name} {n}" for name, n in variant["qdq"].items())
            lines.append(f"| {model_tag(Path(row['model']))} | {key} | {variant['cpu_seconds']:.1f} | {counts} |")
    comparisons = [(row, key, c) for row in study["models"] for key, c in row.get("amax_vs_modelopt", {}).items()]
    if comparisons:
        lines += ["", "| model | activation amax ratio | min / median / max |", "|---|---|---|"]
        lines += [f"| {model_tag(Path(row['model']))} | {key} | {_describe_ratio(c)} |" for row, key, c in comparisons]
    flips = [(row, key, f) for row in study["models"] for key, f in row.get("paired_vs_modelopt", {}).items()]
    if flips:
        lines += ["", "| model | paired | images only ours right | only modelopt right | sign test p |",
                  "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {model_tag(Path(row['model']))} | {key} | {f['ours_only_right']} | {f['peer_only_right']} | "
                  f"{f['p_value']:.2f} |" for row, key, f in flips]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="FP32 ONNX models from export")
    parser.add_argument("--calib", required=True, help="calibration image set (.npz)")
    parser.add_argument("--test", required=True, help="labelled test image set (.npz)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--test-images", type=int, help="score on the first N test images only (default: all)")
    parser.add_argument("--methods", default=",".join(OURS_METHODS), help="our range methods to run")
    parser.add_argument("--tensorrt-only", action="store_true",
                        help="only the TensorRT encodings (ours for desktop-gpu, modelopt): no cpu, no quantize_static")
    parser.add_argument("--modelopt-python", help="a Python with nvidia-modelopt[onnx] installed")
    parser.add_argument("--out", default="runs/peer", type=Path)
    args = parser.parse_args(argv)
    try:
        calib = load_image_set(args.calib)[0][: args.calibration_images]
        images, labels = load_image_set(args.test)
        if labels is None:
            raise UserError(f"{args.test}: no labels; pass the labelled test set written by prepare-data")
        test = (images[: args.test_images], labels[: args.test_images])
        study = {"calibration_images": len(calib), "test_images": len(test[0]),
                 "versions": versions(args.modelopt_python), "models": []}  # fmt: skip
        study["models"] = _earlier_rows(args.out / "peer_study.json", study, args.models)
        for model in args.models:
            tag = model_tag(model)
            study["models"].append(study_model(model, calib, test, args, args.out / "models" / tag,
                                               lambda message, tag=tag: print(f"[{tag}] {message}", flush=True)))
            write_json(args.out / "peer_study.json", *PEER_STUDY, study)  # after every model: a long study resumes
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.out / "peer_study.md").write_text(render(study))
    print(render(study))
    return 0


def _earlier_rows(path: Path, study: dict, models: list[Path]) -> list[dict]:
    """The rows of an earlier run into the same --out with the same set-up, minus the models re-run now."""
    if not path.is_file():
        return []
    earlier = read_json(path, *PEER_STUDY, hint="pass another --out")
    same = all(earlier[key] == study[key] for key in ("calibration_images", "test_images", "versions"))
    if not same:
        raise UserError(f"{path} holds a study with other images or versions; pass another --out")
    rerun = {str(model) for model in models}
    return [row for row in earlier["models"] if row["model"] not in rerun]


if __name__ == "__main__":
    sys.exit(main())
