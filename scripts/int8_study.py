#!/usr/bin/env python3
"""The per-tensor INT8 study: do MimicNorm networks escape the per-tensor collapse of BN-folded ones?

    python scripts/int8_study.py [--out runs/study] [--seeds 0,1,2] [--archs resnet20,mobilenetv2_050]
                                 [--epochs 1.8] [--phase all|train|evaluate]

Phase `train`: for every arch x norm (mimic, bn) x seed, train on Fashion-MNIST (the demo's
schedule), freeze (checked) and export. A model whose ONNX file exists (export writes it
atomically, last) is not trained again, so an interrupted study resumes where it stopped.

Phase `evaluate`: for every model, INT8 per-tensor and per-channel with MinMax, Percentile and
Entropy ranges, written for TensorRT (symmetric int8, full 8-bit weights) and scored on the test
split with Q/DQ simulated in float (what TensorRT's arithmetic approximates, the same on any
machine), plus ONNX Runtime's `quantize_static` with its defaults (the baseline a user reaches
for), gated mixed-precision plans from per-tensor MinMax and per-tensor Entropy, and per-tensor
MinMax and Percentile after cross-layer equalization (calibration.equalize: what a BN network's
owner would do before per-tensor INT8 instead of retraining), and after CLE + bias absorption. Ranges come
from the first half of a 1,024-image sample of the training split; the gate is measured on the
second half. Each model's results are kept in its directory (study_result.json), so this phase
resumes too. The tables (mean and spread over seeds) go to stdout, `<out>/study.md` and
`<out>/study.json`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.artifacts import load_image_set  # noqa: E402
from engines.errors import UserError  # noqa: E402
from engines.schemas import INT8_STUDY, INT8_STUDY_MODEL  # noqa: E402

NORMS = ("mimic", "bn")
CALIBRATION_COUNT = 1024  # first half: activation ranges; second half: the plan's gate


def model_dir(out: Path, arch: str, norm: str, seed: int) -> Path:
    return out / arch / norm / f"seed{seed}"


def train_models(args: argparse.Namespace, out: Path) -> None:
    from mimicnorm_deploy.stages import export_stage, freeze_stage, prepare_data, train_stage
    from mimicnorm_deploy.training.data import load_dataset
    from mimicnorm_deploy.training.train import TrainConfig

    dataset = load_dataset("fashion-mnist", args.data_dir)
    data_dir = out / "data"
    if not (data_dir / "calib.npz").is_file():
        prepare_data(dataset, data_dir, calibration_count=CALIBRATION_COUNT, seed=0)
    for arch in args.archs:
        for seed in args.seeds:
            for norm in NORMS:
                directory = model_dir(out, arch, norm, seed)
                if (directory / "model.onnx").is_file():
                    print(f"[{arch} {norm} seed {seed}] already exported, skipped", flush=True)
                    continue
                started = time.perf_counter()
                config = TrainConfig(arch=arch, norm=norm, epochs=args.epochs, seed=seed, augment=False)
                train_stage(config, dataset, directory, lambda m, tag=f"[{arch} {norm} seed {seed}]": print(
                    f"{tag} {m}", flush=True))  # fmt: skip
                freeze_stage(directory / "checkpoint.safetensors", directory / "frozen.safetensors",
                             str(data_dir / "calib.npz"))  # fmt: skip
                export_stage(directory / "frozen.safetensors", directory / "model.onnx")
                print(f"[{arch} {norm} seed {seed}] trained and exported in "
                      f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)  # fmt: skip


METHODS = ("minmax", "percentile", "entropy")
GRANULARITIES = ("per-tensor", "per-channel")
# 0.6 points of top-1 on the held-out half (512 images) of the calibration sample: the finest gate
# 512 images resolve is 3 / 512 = 0.59 points (calibration.plan), half a point would be refused.
PLAN_GATE_TOP1_DROP = 0.006
PLAN_METHODS = ("minmax", "entropy")  # gated plans start from per-tensor INT8 with these ranges
CLIPPED_INPUT = "per-tensor entropy, input clipped too"  # TensorRT's calibrator on every tensor
CLE_METHODS = ("minmax", "percentile")  # per-tensor INT8 after cross-layer equalization
RESULT_FILE = "study_result.json"


def ort_logits(model_path: str | Path, images, *, kernels: bool = False):
    """Logits from ONNX Runtime: Q/DQ simulated in float, or (kernels) fused into its CPU INT8 kernels."""
    from engines.onnxruntime.session import run_model

    return run_model(model_path, images, graph_optimization="all" if kernels else "disabled")


def evaluate_model(directory: Path, data: dict, say) -> dict:
    """Every INT8 variant of one exported model, scored on the test split."""
    import tempfile

    from calibration.targets import encoding_for

    model = directory / "model.onnx"
    encoding = encoding_for("desktop-gpu")
    result = fp32_scores(model, data, say)
    with tempfile.TemporaryDirectory(prefix="int8-study.") as tmp:
        result["int8"], ranges_by_method = int8_scores(model, data, encoding, Path(tmp), say)
        result.update(ort_default_scores(model, data, Path(tmp), say))
        result["plans"] = plan_scores(model, data, ranges_by_method, encoding, Path(tmp), say)
    return result


def fp32_scores(model: Path, data: dict, say) -> dict:
    """FP32 test accuracy and the model's weight-range spreads."""
    from calibration.metrics import accuracy, weight_range_spread, worst_spread

    test_images, test_labels = data["test"]
    fp32 = accuracy(ort_logits(model, test_images), test_labels)
    spreads = weight_range_spread(model)
    worst = worst_spread(spreads)
    say(f"FP32 {100 * fp32:.2f}%, worst weight-range spread {worst.spread:.1f}x ({worst.node})")
    return {"fp32": fp32, "worst_spread": worst.spread, "worst_spread_layer": worst.node,
            "median_layer_spread": float(sorted(s.spread for s in spreads)[len(spreads) // 2])}  # fmt: skip


def int8_scores(model: Path, data: dict, encoding, tmp: Path, say) -> tuple[dict, dict]:
    """Test accuracy of INT8 per method x granularity, and per-tensor entropy with the input
    clipped too; and the ranges of each method (the gated plans start from them)."""
    from calibration.metrics import accuracy
    from calibration.quantize import write_qdq_model
    from calibration.ranges import calibrate_ranges

    test_images, test_labels = data["test"]
    scores, ranges_by_method = {}, {}
    for method in METHODS:
        ranges_by_method[method] = ranges = calibrate_ranges(model, data["ranges"], method)
        for granularity in GRANULARITIES:
            path = tmp / f"{method}-{granularity}.onnx"
            write_qdq_model(model, ranges, path, per_channel=granularity == "per-channel", **encoding.qdq_options)
            score = accuracy(ort_logits(path, test_images), test_labels)
            scores[f"{granularity} {method}"] = score
            say(f"INT8 {granularity} {method}: {100 * score:.2f}%")
    # TensorRT's own calibrator applies entropy to the network input too; the toolkit never
    # clips input pixels (calibration.ranges). The difference, per-tensor:
    plain = calibrate_ranges(model, data["ranges"], "entropy", clip_input=True)
    path = tmp / "entropy-clipped-input.onnx"
    write_qdq_model(model, plain, path, **encoding.qdq_options)
    scores[CLIPPED_INPUT] = score = accuracy(ort_logits(path, test_images), test_labels)
    say(f"INT8 {CLIPPED_INPUT}: {100 * score:.2f}%")
    return scores, ranges_by_method


def ort_default_scores(model: Path, data: dict, tmp: Path, say) -> dict:
    """The baseline a user reaches for: quantize_static with every default (per-tensor, MinMax,
    asymmetric activations), run by ONNX Runtime's own CPU kernels and simulated."""
    from onnxruntime.quantization import quantize_static

    from calibration.data import ArrayCalibrationReader
    from calibration.inputs import image_input
    from calibration.metrics import accuracy
    from engines.onnx_model import load_onnx

    test_images, test_labels = data["test"]
    default = tmp / "ort-default.onnx"
    input_name = image_input(load_onnx(model), model)[0]
    quantize_static(str(model), str(default), ArrayCalibrationReader(data["ranges"], input_name, 32))
    result = {"ort_default_kernels": accuracy(ort_logits(default, test_images, kernels=True), test_labels),
              "ort_default_simulated": accuracy(ort_logits(default, test_images), test_labels)}  # fmt: skip
    say(f"ORT quantize_static defaults: {100 * result['ort_default_kernels']:.2f}% (kernels), "
        f"{100 * result['ort_default_simulated']:.2f}% (simulated)")  # fmt: skip
    return result


def plan_scores(model: Path, data: dict, ranges_by_method: dict, encoding, tmp: Path, say) -> dict:
    """Gated plans for the per-tensor settings that can collapse (FP16 for what must move): test
    accuracy and the layers moved, or why the gate was unreachable."""
    from calibration.metrics import accuracy
    from calibration.plan import plan_precision, write_mixed_model
    from engines.precision_plan import Gate

    test_images, test_labels = data["test"]
    holdout_images, holdout_labels = data["holdout"]
    plans = {}
    for method in PLAN_METHODS:
        key = f"per-tensor {method}"
        try:
            plan = plan_precision(model, ranges_by_method[method], holdout_images, Gate(PLAN_GATE_TOP1_DROP),
                                  holdout_labels=holdout_labels, **encoding.qdq_options, high_precision="fp16")
            mixed = tmp / "plan.onnx"
            write_mixed_model(model, plan, ranges_by_method[method], mixed)
            plans[key] = {"accuracy": accuracy(ort_logits(mixed, test_images), test_labels),
                          "layers": len(plan.layers), "moved": [m.node for m in plan.moved]}
            say(f"gated plan, {key}: {len(plan.moved)}/{len(plan.layers)} layers to FP16 "
                f"({', '.join(m.node for m in plan.moved)}), {100 * plans[key]['accuracy']:.2f}%")
        except UserError as exc:  # an unreachable gate is a result too
            plans[key] = {"error": str(exc)}
            say(f"gated plan, {key}: {exc}")
    return plans


def evaluate_equalized(directory: Path, data: dict, say) -> dict:
    """Per-tensor INT8 of the cross-layer-equalized model (FP32 checked unchanged), on the test split."""
    import tempfile

    from calibration.equalize import write_equalized_model
    from calibration.metrics import accuracy, weight_range_spread, worst_spread

    test_images, test_labels = data["test"]
    with tempfile.TemporaryDirectory(prefix="int8-study-cle.") as tmp:
        model = Path(tmp) / "equalized.onnx"
        equalization = write_equalized_model(directory / "model.onnx", model)
        worst = worst_spread(weight_range_spread(model))
        result = {"pairs": len(equalization.pairs), "fp32": accuracy(ort_logits(model, test_images), test_labels),
                  "worst_spread": worst.spread, "worst_spread_layer": worst.node}  # fmt: skip
        say(f"CLE: {len(equalization.pairs)} conv pairs equalized, FP32 {100 * result['fp32']:.2f}%, worst spread "
            f"{worst.spread:.1f}x ({worst.node})")  # fmt: skip
        result["int8"] = per_tensor_scores(model, data, "CLE", say)
        result["absorbed"] = absorbed_scores(model, data, Path(tmp), say)
    return result


def per_tensor_scores(model: Path, data: dict, label: str, say) -> dict:
    """Per-tensor INT8 of `model` with each of CLE_METHODS' ranges (from the range images), written
    for TensorRT and scored on the test split; the Q/DQ models go beside `model`."""
    from calibration.metrics import accuracy
    from calibration.quantize import write_qdq_model
    from calibration.ranges import calibrate_ranges
    from calibration.targets import encoding_for

    test_images, test_labels = data["test"]
    scores = {}
    for method in CLE_METHODS:
        path = model.with_name(f"{model.stem}.{method}.onnx")
        ranges = calibrate_ranges(model, data["ranges"], method)
        write_qdq_model(model, ranges, path, **encoding_for("desktop-gpu").qdq_options)
        scores[f"per-tensor {method}"] = score = accuracy(ort_logits(path, test_images), test_labels)
        say(f"{label} + INT8 per-tensor {method}: {100 * score:.2f}%")
    return scores


def absorbed_scores(equalized: Path, data: dict, tmp: Path, say) -> dict:
    """Per-tensor INT8 after bias absorption (calibration.equalize.absorb_biases, shifts from the
    range images) on top of CLE, on the test split; FP32 too, as absorption is exact only on the
    range images."""
    import onnx

    from calibration.equalize import absorb_biases
    from calibration.metrics import accuracy

    test_images, test_labels = data["test"]
    absorbed_model, absorbed = absorb_biases(onnx.load(str(equalized)), data["ranges"])
    model = tmp / "absorbed.onnx"
    onnx.save(absorbed_model, str(model))
    result = {"pairs": len(absorbed), "channels_shifted": sum(a.channels_shifted for a in absorbed),
              "fp32": accuracy(ort_logits(model, test_images), test_labels)}  # fmt: skip
    say(f"CLE + bias absorption: {result['channels_shifted']} channels shifted in {len(absorbed)} pairs, FP32 "
        f"{100 * result['fp32']:.2f}%")  # fmt: skip
    result["int8"] = per_tensor_scores(model, data, "CLE + bias absorption", say)
    return result


def evaluate_models(args: argparse.Namespace, out: Path) -> list[dict]:
    from engines.artifacts import read_json, write_json

    calib_images, calib_labels = load_image_set(out / "data" / "calib.npz")
    half = len(calib_images) // 2
    data = {
        "ranges": calib_images[:half],
        "holdout": (calib_images[half:], calib_labels[half:]),
        "test": load_image_set(out / "data" / "test.npz"),
    }
    rows = []
    for arch in args.archs:
        for norm in NORMS:
            for seed in args.seeds:
                directory = model_dir(out, arch, norm, seed)
                if not (directory / "model.onnx").is_file():
                    raise UserError(f"{directory}: no model.onnx; run this script with --phase train first")
                path = directory / RESULT_FILE
                if path.is_file():
                    document = read_json(path, *INT8_STUDY_MODEL)
                    result = {k: v for k, v in document.items() if k not in ("schema", "schema_version")}
                else:
                    started = time.perf_counter()
                    result = evaluate_model(directory, data, lambda m, tag=f"[{arch} {norm} seed {seed}]": print(
                        f"{tag} {m}", flush=True))  # fmt: skip
                    write_json(path, *INT8_STUDY_MODEL, {"arch": arch, "norm": norm, "seed": seed, **result})
                    print(f"[{arch} {norm} seed {seed}] evaluated in {(time.perf_counter() - started) / 60:.1f} min",
                          flush=True)  # fmt: skip
                if "absorbed" not in result.get("cle", {}):  # older results get the CLE and BA columns
                    result["cle"] = evaluate_equalized(directory, data, lambda m, tag=f"[{arch} {norm} seed {seed}]":
                                                       print(f"{tag} {m}", flush=True))  # fmt: skip
                    write_json(path, *INT8_STUDY_MODEL, {"arch": arch, "norm": norm, "seed": seed, **result})
                rows.append({"arch": arch, "norm": norm, "seed": seed, **result})
    return rows


def summarize(rows: list[dict]) -> str:
    """Markdown: per arch x norm, mean and (min-max) over seeds of every test accuracy."""
    groups = [(arch, norm, [r for r in rows if r["arch"] == arch and r["norm"] == norm])
              for arch in dict.fromkeys(r["arch"] for r in rows) for norm in NORMS]  # fmt: skip
    groups = [(arch, {"mimic": "MimicNorm", "bn": "BN-folded"}[norm], group) for arch, norm, group in groups if group]
    seeds = sorted({r["seed"] for r in rows})
    lines = int8_table(groups, seeds) + cle_table(groups) + ort_and_plan_table(groups)
    return "\n".join(lines) + "\n"


def cell(values: list[float], scale: float = 100, fmt: str = ".2f") -> str:
    """One table cell: the value, or the mean (min-max) of several."""
    import numpy as np

    if not values:
        return "n/a"
    if len(values) == 1:
        return format(scale * values[0], fmt)
    return (f"{format(scale * float(np.mean(values)), fmt)} ({format(scale * min(values), fmt)}-"
            f"{format(scale * max(values), fmt)})")  # fmt: skip


def plan_cell(plans: list[dict]) -> str:
    """The plans' accuracy, [layers moved / layers] per seed, and how many gates were unreachable."""
    reached = [p for p in plans if "accuracy" in p]
    failed = len(plans) - len(reached)
    moved = ", ".join(f"{len(p['moved'])}/{p['layers']}" for p in reached)
    return cell([p["accuracy"] for p in reached]) + f" [{moved}]" + (f", {failed} unreachable" if failed else "")


def int8_table(groups: list, seeds: list[int]) -> list[str]:
    int8_columns = [f"{g} {m}" for g in GRANULARITIES for m in METHODS] + [CLIPPED_INPUT]
    lines = [
        f"Test accuracy % on the 10,000 test images, mean (min-max) over seeds {seeds}. INT8: symmetric int8",
        "Q/DQ as written for TensorRT (full 8-bit weights, TensorRT's placement), Q/DQ simulated in float.",
        "Input pixels keep their MinMax range under every method, except in the last column.",
        "",
        "| model | norm | FP32 | " + " | ".join(int8_columns) + " |",
        "|---" * (len(int8_columns) + 3) + "|",
    ]
    for arch, label, group in groups:
        values = [cell([r["fp32"] for r in group])] + [cell([r["int8"][c] for r in group]) for c in int8_columns]
        lines.append(f"| {arch} | {label} | " + " | ".join(values) + " |")
    return lines


def cle_table(groups: list) -> list[str]:
    cle_columns = [f"per-tensor {m}" for m in CLE_METHODS]
    lines = [
        "",
        "After cross-layer equalization (Nagel et al. 2019; exact in FP32, [conv pairs equalized]), per-tensor INT8",
        "as above, against the same models' per-tensor INT8 without it; BA: bias absorption on top of CLE (shifts",
        "from the range images, exact on them only, so FP32 after it is scored too).",
        "",
        "| model | norm | FP32 after CLE | "
        + " | ".join(f"{c}, no CLE | {c} + CLE | {c} + CLE + BA" for c in cle_columns)
        + " | FP32 after CLE + BA [channels shifted] | worst weight-range spread after CLE |",
        "|---" * (3 * len(cle_columns) + 5) + "|",
    ]
    for arch, label, group in groups:
        pairs = sorted({r["cle"]["pairs"] for r in group})
        values = [cell([r["cle"]["fp32"] for r in group]) + f" [{', '.join(map(str, pairs))}]"]
        for c in cle_columns:
            values += [cell([r["int8"][c] for r in group]), cell([r["cle"]["int8"][c] for r in group]),
                       cell([r["cle"]["absorbed"]["int8"][c] for r in group])]  # fmt: skip
        shifted = ", ".join(str(r["cle"]["absorbed"]["channels_shifted"]) for r in group)
        values.append(cell([r["cle"]["absorbed"]["fp32"] for r in group]) + f" [{shifted}]")
        values.append(cell([r["cle"]["worst_spread"] for r in group], 1, ".1f") + "x")
        lines.append(f"| {arch} | {label} | " + " | ".join(values) + " |")
    return lines


def ort_and_plan_table(groups: list) -> list[str]:
    plan_columns = [f"per-tensor {m}" for m in PLAN_METHODS]
    lines = [
        "",
        "ONNX Runtime's `quantize_static` with its defaults (per-tensor, MinMax, asymmetric int8 activations),",
        "run by its CPU kernels and simulated; gated plans (top-1 drop <= "
        f"{100 * PLAN_GATE_TOP1_DROP:.1f} points on the held-out calibration half, FP16 for the layers moved) with "
        "[layers moved / layers] per seed; weight-range spread of the worst layer (max / median per-channel range).",
        "",
        "| model | norm | ORT defaults, kernels | ORT defaults, simulated | "
        + " | ".join(f"plan from {c}" for c in plan_columns) + " | worst weight-range spread |",
        "|---" * (len(plan_columns) + 5) + "|",
    ]
    for arch, label, group in groups:
        values = [cell([r["ort_default_kernels"] for r in group]), cell([r["ort_default_simulated"] for r in group])]
        values += [plan_cell([r["plans"][c] for r in group]) for c in plan_columns]
        values.append(cell([r["worst_spread"] for r in group], 1, ".1f") + "x")
        lines.append(f"| {arch} | {label} | " + " | ".join(values) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: Debian's dataset-fashion-mnist)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--archs", default="resnet20,mobilenetv2_050")
    parser.add_argument("--epochs", type=float, default=1.8)
    parser.add_argument("--phase", default="all", choices=["all", "train", "evaluate"])
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.archs = args.archs.split(",")
    out = Path(args.out)
    try:
        if args.phase in ("all", "train"):
            train_models(args, out)
        if args.phase in ("all", "evaluate"):
            from engines.artifacts import atomic_write_text, write_json

            rows = evaluate_models(args, out)
            table = summarize(rows)
            print(table)
            atomic_write_text(out / "study.md", table)
            write_json(out / "study.json", *INT8_STUDY, {"rows": rows})
            print(f"written {out / 'study.md'}, {out / 'study.json'}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
