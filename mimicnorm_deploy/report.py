"""The run report: one versioned JSON, a Markdown page and a self-contained HTML page.

It leads with what the toolkit exists to show, in this order: MimicNorm vs BN-folded at each
precision (accuracy, latency ratio with its bootstrap interval, memory), then each precision
against FP32, then every engine in detail, then the artifacts made for TensorRT targets (their
simulated accuracy; latency where a bench JSON from that device sits in the run). Latency comes
from every bench JSON under the run directory, so results measured on another device and copied
into the run (RUN/NORM/bench/DEVICE/...) appear as rows of their own. Reads only JSON artifacts,
so it needs no torch.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from engines.artifacts import atomic_write_text, now_utc, read_json, staged_files, write_json
from engines.errors import UserError
from engines.paths import StageIO
from engines.schemas import BENCH, CALIBRATION, FP16_REFUSALS, REPORT, TRAIN_REPORT
from engines.targets import DEFAULT_TARGET
from mimicnorm_deploy.compare import Measurement, PairRow, describe_environment, load_measurements, within_run_pairs
from mimicnorm_deploy.device_results import DEVICES_DIR, device_sections, render_device_table
from mimicnorm_deploy.layout import (
    EQUALIZED_VARIANT,
    NORM_LABELS,
    NORMS_COMPARED,
    PLAN_VARIANT,
    SIMULATED_SUFFIX,
    TENSORRT_VARIANT,
    VARIANTS,
    RunLayout,
    variant_name,
)

NOT_MEASURED = "not measured here"


def build_report(run_dir: str | os.PathLike) -> dict[str, Any]:
    layout = RunLayout(Path(run_dir))
    models = {norm: _model_section(layout, norm) for norm in NORMS_COMPARED if layout.train_report(norm).is_file()}
    if not models:
        raise UserError(f"{run_dir}: no trained model found (expected */train_report.json); run 'demo' or 'train'")
    measurements = _measurements(layout)
    pairs = within_run_pairs(measurements)
    return {
        "created": now_utc(),
        "rendered_on": platform.platform(),
        "models": models,
        "comparisons": {
            **_training_comparison(models),
            "twins": [_pair_entry(row) for row in pairs if row.a.norm != row.b.norm],
            "precisions": [_pair_entry(row) for row in pairs if row.a.norm == row.b.norm],
        },
        "measured_on": sorted({m.device for m in measurements}),
        "devices": device_sections(run_dir),  # results unbundled from Jetsons (mimicnorm_deploy.device_results)
        "tensorrt_artifacts": [a for norm in models for a in _tensorrt_artifacts(layout, norm)],
        "per_tensor_int8": _per_tensor_int8(layout, models),
        "fp16_refusals": [dict(r, norm=norm) for norm in models for r in _fp16_refusals(layout, norm)],
    }


def _measurements(layout: RunLayout) -> list[Measurement]:
    # Every bench JSON with latency under the run's model directories (this machine's) and under
    # RUN/devices/<target>/ (unbundled from a device); none yet is not an error: a run can be
    # reported before bench.
    directories = [layout.model_dir(norm) / "bench" for norm in NORMS_COMPARED]
    directories += sorted((layout.root / DEVICES_DIR).glob("*/"))  # results unbundled from each device
    found = []
    for directory in directories:
        if directory.is_dir():
            try:
                found += load_measurements(directory)
            except UserError as exc:
                if "no engine with latency measurements" not in str(exc):
                    raise
    return found


def _model_section(layout: RunLayout, norm: str) -> dict[str, Any]:
    train = read_json(layout.train_report(norm), *TRAIN_REPORT)
    engines = {}
    for variant in VARIANTS:
        bench_path = layout.bench(norm, variant)
        if not bench_path.is_file():
            continue
        bench = read_json(bench_path, *BENCH)
        accuracy = bench.get("accuracy", {})
        entry: dict[str, Any] = {
            "bench_file": str(bench_path),
            "precision": bench["engine"]["precision"],
            "accuracy": accuracy.get("accuracy"),
            "top1_agreement_vs_fp32": accuracy.get("top1_agreement"),
            "logits_sqnr_db_vs_fp32": accuracy.get("logits_sqnr_db"),
            "device": bench["engine"]["device"],  # where this engine was built and measured
            "environment": bench.get("environment", {}),
            "latency": {str(r["batch_size"]): r for r in bench.get("latency", [])},
            "mlperf": bench.get("mlperf"),
            "memory": bench.get("memory", {}),
        }
        simulated = layout.bench(norm, variant + SIMULATED_SUFFIX)
        if simulated.is_file():
            entry["simulated_accuracy"] = read_json(simulated, *BENCH)["accuracy"]["accuracy"]
        record = _calibration_record(layout, norm, variant) if variant != "fp32" else None
        if record is not None:
            entry["calibration"] = _calibration_summary(record)
        engines[variant] = entry
    return {
        "arch": train["config"]["arch"],
        "train": {
            "epochs": train["config"]["epochs"],
            "final_test_accuracy": train["final_test_accuracy"],
            "best_test_accuracy": train["best_test_accuracy"],
            "activation_memory": train["activation_memory"],
            "mean_step_ms": train["mean_step_ms"],
            "step_ms_percentiles": train["step_ms_percentiles"],
        },
        "engines": engines,
    }


def _calibration_summary(calibration: dict[str, Any]) -> dict[str, Any]:
    quality = calibration["quality"]
    return {
        "target": calibration["target"],
        "per_channel": calibration["quantize"]["config"]["per_channel"] if calibration.get("quantize") else None,
        "activations": calibration["encoding"]["activations"],
        "reduce_range": calibration["encoding"]["reduce_range"],
        "calibration_images": calibration["calibration_images"],
        "worst_weight_spread": calibration["worst_weight_spread"],
        "simulated_accuracy": quality.get("accuracy"),
        "logits_sqnr_db": quality.get("logits_sqnr_db"),
        "measured_on": f"{quality['images']} images ({quality['image_set']})" if quality.get("images") else None,
        "layers": [{"node": layer["node"], "op_type": layer["op_type"], "precision": layer["precision"],
                    "output_sqnr_db": layer["output_sqnr_db"]} for layer in quality.get("layers", [])],  # fmt: skip
        "plan": _plan_summary(calibration.get("plan")),
    }


def _calibration_record(layout: RunLayout, norm: str, variant: str) -> dict[str, Any] | None:
    """The variant's calibration record, or None where the run made none."""
    path = layout.calibration_record(norm, variant)
    return read_json(path, *CALIBRATION) if path.is_file() else None


def _plan_summary(plan: dict[str, Any] | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {"high_precision": plan["high_precision"], "layers": plan["layers"], "moved": plan["moved"],
            "gate": plan["gate"], "result": plan["result"]}  # fmt: skip


def _tensorrt_artifacts(layout: RunLayout, norm: str) -> list[dict[str, Any]]:
    """What the run made for TensorRT targets: accuracy where this machine can simulate it."""
    record = _calibration_record(layout, norm, TENSORRT_VARIANT)
    if record is None:
        return []
    summary = _calibration_summary(record)
    around = "" if record["high_precision"] == "fp16" else f", {record['high_precision'].upper()} around INT8"
    artifacts = [{"norm": norm, "variant": TENSORRT_VARIANT, "file": str(layout.onnx(norm, TENSORRT_VARIANT)),
                  "target": record["target"], "what": f"INT8 Q/DQ ONNX (TensorRT 11, or 10 with explicit "
                  f"quantization{around})", "simulated_accuracy": summary["simulated_accuracy"],
                  "logits_sqnr_db": summary["logits_sqnr_db"], "calibration": summary}]  # fmt: skip
    extras = (("trt_cache", "TensorRT 10 calibration cache (implicit INT8)"), ("fp16", "FP16 ONNX"))
    artifacts += [{"norm": norm, "variant": key, "file": record[key], "target": record["target"], "what": what,
                   "simulated_accuracy": None, "logits_sqnr_db": None} for key, what in extras if record.get(key)]
    return artifacts + _gated_plan_artifact(layout, norm)


def _gated_plan_artifact(layout: RunLayout, norm: str) -> list[dict[str, Any]]:
    """The demo's gated plan: per-tensor INT8 with the layers the gate required in high precision."""
    record = _calibration_record(layout, norm, PLAN_VARIANT)
    if record is None:
        return []
    summary = _calibration_summary(record)
    plan = summary["plan"]
    moved = [m["node"] for m in plan["moved"]]
    gate = 100 * plan["gate"]["max_top1_drop"]
    what = (f"per-tensor INT8, gated plan (top-1 drop <= {gate:g} point{'' if gate == 1 else 's'} on "
            f"{record['holdout_images']} held-out calibration images): {len(moved)}/{len(plan['layers'])} layers to "
            f"{plan['high_precision'].upper()}" + (f" ({', '.join(moved)})" if moved else ""))  # fmt: skip
    return [{"norm": norm, "variant": PLAN_VARIANT, "file": str(layout.onnx(norm, PLAN_VARIANT)),
             "target": record["target"], "what": what, "simulated_accuracy": summary["simulated_accuracy"],
             "logits_sqnr_db": summary["logits_sqnr_db"], "calibration": summary}]  # fmt: skip


def _per_tensor_int8(layout: RunLayout, models: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-tensor INT8 for this CPU against FP32, per twin (test split, this CPU's kernels and
    simulated), then the BN twin after cross-layer equalization where the run made it: the
    comparison that shows whether folding BN hurts per-tensor INT8 for this network."""
    per_tensor, per_channel = (variant_name(recipe, DEFAULT_TARGET) for recipe in ("int8-per-tensor",
                                                                                   "int8-per-channel"))
    rows = []
    for norm, model in models.items():
        engines = model["engines"]
        if "fp32" not in engines or per_tensor not in engines:
            continue
        tensor, channel = engines[per_tensor], engines.get(per_channel, {})
        rows.append({"norm": norm, "what": "per-tensor", "fp32_accuracy": engines["fp32"]["accuracy"],
                     "accuracy": tensor["accuracy"], "simulated_accuracy": tensor.get("simulated_accuracy"),
                     "per_channel_accuracy": channel.get("accuracy"),
                     "worst_weight_spread": (tensor.get("calibration") or {}).get("worst_weight_spread")})  # fmt: skip
        record = _calibration_record(layout, norm, EQUALIZED_VARIANT)
        if record is not None:
            quality = record["quality"]
            rows.append({"norm": norm, "what": "per-tensor after cross-layer equalization",
                         "fp32_accuracy": quality["accuracy_fp32"], "accuracy": quality["kernel_accuracy"],
                         "simulated_accuracy": quality["accuracy"], "per_channel_accuracy": None,
                         "worst_weight_spread": record["worst_weight_spread"],
                         "equalized_pairs": len(record["equalization"]["pairs"])})  # fmt: skip
    return rows


def _fp16_refusals(layout: RunLayout, norm: str) -> list[dict[str, Any]]:
    path = layout.fp16_refusals(norm)
    return read_json(path, *FP16_REFUSALS)["refused"] if path.is_file() else []


def _training_comparison(models: dict[str, Any]) -> dict[str, Any]:
    if "mimic" not in models or "bn" not in models:
        return {}
    mimic, bn = models["mimic"]["train"], models["bn"]["train"]
    return {"mimic_vs_bn": {
        "activation_memory_ratio": _ratio(mimic["activation_memory"]["bytes"], bn["activation_memory"]["bytes"]),
        "step_time_ratio": {q: _ratio(mimic["step_ms_percentiles"].get(q), bn["step_ms_percentiles"].get(q))
                            for q in ("p10", "p50", "p90")},
        "test_accuracy_difference": mimic["final_test_accuracy"] - bn["final_test_accuracy"],
    }}  # fmt: skip


def _pair_entry(row: PairRow) -> dict[str, Any]:
    def engine_bytes(m: Measurement) -> int | None:
        # What the engine itself costs: peak RSS of a process running it, less that process's baseline.
        if "peak_rss_bytes" not in m.memory:
            return None
        return m.memory["peak_rss_bytes"] - m.memory.get("baseline_rss_bytes", 0)

    return {
        "a": {"norm": row.a.norm, "variant": row.a.variant, "device": row.a.device},
        "b": {"norm": row.b.norm, "variant": row.b.variant, "device": row.b.device},
        "batch_size": row.batch_size,
        "latency_ratio": row.estimate.to_dict(),
        "a_p50_ms": row.a.latency[row.batch_size].p50_ms,
        "b_p50_ms": row.b.latency[row.batch_size].p50_ms,
        "accuracy_difference": _difference(row.a.accuracy, row.b.accuracy),
        "engine_memory_ratio": _ratio(engine_bytes(row.a), engine_bytes(row.b)),
        "model_file_ratio": _ratio(row.a.memory.get("model_file_bytes"), row.b.memory.get("model_file_bytes")),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


# --- Markdown -----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _norm(norm: str) -> str:
    return NORM_LABELS.get(norm, norm)


def _ratio_text(ratio: dict[str, Any]) -> str:
    return f"{ratio['value']:.3f} [{ratio['low']:.3f}, {ratio['high']:.3f}] {ratio['verdict']}"


RATIO_NOTE = (
    "Latency ratio: median over median, with a 95 % bootstrap interval from the raw samples (engines timed in the "
    "same interleaved rounds are resampled by round); 'no detectable difference' when the interval includes 1 or "
    "stays within the tolerance. Engine memory: peak RSS of a fresh process running the engine, less its baseline "
    "(one measurement, no interval)."
)


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# mimicnorm-deploy report", "", f"Created {report['created']}. Devices with latency: "
             f"{', '.join(report['measured_on']) or 'none'}.", "", RATIO_NOTE]  # fmt: skip
    lines += _twins_markdown(report)
    lines += _per_tensor_markdown(report)
    lines += _precisions_markdown(report)
    lines += _engines_markdown(report)
    lines += render_device_table(report, NORM_LABELS)
    lines += _tensorrt_markdown(report)
    lines += _training_markdown(report)
    lines += ["", "## Where the engines were measured", ""]
    for norm, model in report["models"].items():
        for variant, e in model["engines"].items():
            lines.append(f"- {_norm(norm)} {variant}: {describe_environment(e['environment'])}")
    return "\n".join(lines) + "\n"


def _twins_markdown(report: dict[str, Any]) -> list[str]:
    lines = ["", f"## {NORM_LABELS['mimic']} vs {NORM_LABELS['bn']} at each precision", "",
             "| device | variant | batch | MimicNorm acc % | BN-folded acc % | p50 ms (M / BN) | latency ratio M / BN "
             "[95 % interval] | engine memory ratio |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for pair in report["comparisons"]["twins"]:
        a, b = pair["a"], pair["b"]
        lines.append(_row([
            a["device"], a["variant"], str(pair["batch_size"]), _pct(_accuracy(report, a)), _pct(_accuracy(report, b)),
            f"{pair['a_p50_ms']:.3f} / {pair['b_p50_ms']:.3f}", _ratio_text(pair["latency_ratio"]),
            _num(pair["engine_memory_ratio"], ".3f"),
        ]))  # fmt: skip
    if not report["comparisons"]["twins"]:
        lines.append("| n/a | both models' engines need latency measurements | | | | | | |")
    return lines


PER_TENSOR_NOTE = (
    "Per-tensor INT8 (one weight scale per layer) is what fixed-function INT8 hardware and the simplest "
    "calibrations use. Folding BN into a convolution multiplies each output channel by its own factor, which can "
    "spread a layer's per-channel weight ranges so far that one scale leaves most channels a few levels; MimicNorm "
    "has no BN to fold. Test split; this CPU's INT8 kernels, and simulated (Q/DQ as float ops)."
)


def _per_tensor_markdown(report: dict[str, Any]) -> list[str]:
    rows, refusals = report.get("per_tensor_int8", []), report.get("fp16_refusals", [])
    plans = [a for a in report["tensorrt_artifacts"] if a.get("variant") == PLAN_VARIANT]
    if not (rows or plans or refusals):
        return []
    lines = ["", "## Per-tensor INT8: what folding BN costs", "", PER_TENSOR_NOTE, "",
             "| model | INT8 | FP32 acc % | INT8 acc % | drop (points) | simulated acc % | per-channel acc % | "
             "worst weight-range spread |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        spread = row["worst_weight_spread"]
        lines.append(_row([
            _norm(row["norm"]), row["what"], _pct(row["fp32_accuracy"]), _pct(row["accuracy"]),
            _num(points_lost(row["fp32_accuracy"], row["accuracy"]), "+.2f"), _pct(row["simulated_accuracy"]),
            _pct(row["per_channel_accuracy"]), f"{spread['spread']:.1f}x ({spread['node']})" if spread else "n/a",
        ]))  # fmt: skip
    if plans:
        lines += ["", "Gated plans for TensorRT (symmetric per-tensor INT8; the most sensitive layers leave INT8 until "
                  "the held-out calibration images pass the gate), accuracy simulated on the test split:", "",
                  "| model | plan | acc % | drop vs FP32 (points) |", "|---|---|---|---|"]  # fmt: skip
        for plan in plans:
            fp32 = report["models"].get(plan["norm"], {}).get("engines", {}).get("fp32", {}).get("accuracy")
            lines.append(_row([_norm(plan["norm"]), plan["what"], _pct(plan["simulated_accuracy"]),
                               _num(points_lost(fp32, plan["simulated_accuracy"]), "+.2f")]))  # fmt: skip
    if refusals:
        lines += ["", "FP16 products refused (FP16's largest value is 65504):", ""]
        lines += [f"- {_norm(r['norm'])} `{r['product']}` ({r['what']}): {r['reason']}; {r['instead']}."
                  for r in refusals]  # fmt: skip
    return lines


def points_lost(fp32: float | None, other: float | None) -> float | None:
    """FP32 accuracy minus another's, in points (+0.0: no "-0.00")."""
    return None if fp32 is None or other is None else 100 * (fp32 - other) + 0.0


def _accuracy(report: dict[str, Any], side: dict[str, str]) -> float | None:
    return report["models"].get(side["norm"], {}).get("engines", {}).get(side["variant"], {}).get("accuracy")


def _precisions_markdown(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Each precision against FP32", "",
             "| device | model | variant | batch | acc drop (points) | latency ratio / FP32 [95 % interval] | "
             "model file ratio |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for pair in report["comparisons"]["precisions"]:
        a = pair["a"]
        drop = pair["accuracy_difference"]
        lines.append(_row([
            a["device"], _norm(a["norm"]), a["variant"], str(pair["batch_size"]),
            _num(None if drop is None else -100 * drop + 0.0, "+.2f"), _ratio_text(pair["latency_ratio"]),
            _num(pair["model_file_ratio"], ".3f"),
        ]))  # fmt: skip
    return lines


def _engines_markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        "", "## Engines in detail (this machine)", "",
        "Accuracy on the test split; *simulated* runs Q/DQ as float ops (graph optimizations off; n/a: no "
        "`build --simulate` engine was benched into `bench/<variant>-simulated.json`, see the README's own-images "
        "section). Latency in ms, "
        "SingleStream (each query after the previous returns); host latency only where the backend has no device "
        "timing.", "",
        "| model | engine | acc % | simulated acc % | top-1 agree % | SQNR dB | b1 p50 | b1 p90 | b1 p99 | b64 p50 "
        "| offline img/s (batch) | peak RSS MiB | file KiB | worst weight spread |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for norm, model in report["models"].items():
        for variant, e in model["engines"].items():
            b1, b64 = e["latency"].get("1", {}), e["latency"].get("64", {})
            spread = (e.get("calibration") or {}).get("worst_weight_spread")
            mlperf = e.get("mlperf") or {}
            offline = (f"{mlperf['offline_throughput_ips']:.0f} ({mlperf['offline_batch_size']})"
                       if mlperf.get("offline_throughput_ips") else "n/a")  # fmt: skip
            lines.append(_row([
                _norm(norm), variant, _pct(e["accuracy"]), _pct(e.get("simulated_accuracy")),
                _pct(e["top1_agreement_vs_fp32"]), _num(e["logits_sqnr_db_vs_fp32"], ".1f"),
                _num(b1.get("p50_ms"), ".3f"), _num(b1.get("p90_ms"), ".3f"), _num(b1.get("p99_ms"), ".3f"),
                _num(b64.get("p50_ms"), ".2f"), offline,
                _num(e["memory"].get("peak_rss_bytes", 0) / 2**20, ".0f"),
                _num(e["memory"].get("model_file_bytes", 0) / 2**10, ".0f"),
                f"{spread['spread']:.1f}x ({spread['node']})" if spread else "",
            ]))  # fmt: skip
    return lines


def _tensorrt_markdown(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Artifacts for TensorRT targets", "",
             f"Built and timed on the target device (`mimicnorm-deploy build` there); latency is {NOT_MEASURED} "
             "unless a bench JSON from that device is in the run.", "",
             "| model | file | target | what | simulated acc % | logits SQNR dB | measured on | latency |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for artifact in report["tensorrt_artifacts"]:
        lines.append(_row([
            _norm(artifact["norm"]), Path(artifact["file"]).name, artifact["target"], artifact["what"],
            _pct(artifact["simulated_accuracy"]), _num(artifact["logits_sqnr_db"], ".1f"),
            (artifact.get("calibration") or {}).get("measured_on") or "",
            _latency_on_target(report, artifact),
        ]))  # fmt: skip
    return lines


def _latency_on_target(report: dict[str, Any], artifact: dict[str, Any]) -> str:
    return "see the device's rows" if artifact["target"] in report["measured_on"] else NOT_MEASURED


def _training_markdown(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Training", "",
             "| model | arch | epochs | test acc % | activation memory saved for backward | batch | mean step ms |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for norm, model in report["models"].items():
        train = model["train"]
        memory = train["activation_memory"]
        lines.append(_row([
            _norm(norm), model["arch"], str(train["epochs"]), _pct(train["final_test_accuracy"]),
            f"{memory['bytes'] / 2**20:.1f} MiB", str(memory["batch_size"]), _num(train["mean_step_ms"], ".1f"),
        ]))  # fmt: skip
    c = report["comparisons"].get("mimic_vs_bn")
    if c:
        step = c["step_time_ratio"]
        lines += [
            "",
            f"- MimicNorm / BN activation memory saved for backward: **{_num(c['activation_memory_ratio'], '.3f')}**",
            f"- MimicNorm / BN training step time: p10 {_num(step['p10'], '.3f')}, **p50 {_num(step['p50'], '.3f')}**, "
            f"p90 {_num(step['p90'], '.3f')}",
            f"- MimicNorm - BN test accuracy: {_num(100 * c['test_accuracy_difference'], '+.2f')} points",
        ]
    return lines


REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}


def report_io(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> tuple[StageIO, Path]:
    """The run directory read and the report directory written (default RUN_DIR/report)."""
    io = StageIO("report")
    io.input_dir(run_dir, "pass a run directory written by 'mimicnorm-deploy demo' (or the stages)")
    out = io.output_dir(out_dir if out_dir is not None else RunLayout(Path(run_dir)).report_dir, "report directory")
    for name in REPORT_FILES.values():
        io.output_file(out / name, "report")
    return io, out


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    from mimicnorm_deploy.report_html import render_html

    _, out = report_io(run_dir, out_dir)
    # The run's JSON files passed their schema check but may have been edited by hand: a field of the
    # wrong type or missing surfaces here, while reading or rendering them, before anything is written.
    try:
        report = build_report(run_dir)
        markdown = render_markdown(report)
        html = render_html(report, _measurements(RunLayout(Path(run_dir))))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UserError(
            f"{run_dir}: a train report or bench record is malformed ({type(exc).__name__}: {exc}); "
            "re-run the stage that wrote it"
        ) from None
    with staged_files(out) as staging:
        write_json(staging / REPORT_FILES["json"], *REPORT, report)
        atomic_write_text(staging / REPORT_FILES["markdown"], markdown)
        atomic_write_text(staging / REPORT_FILES["html"], html)
    return {kind: out / name for kind, name in REPORT_FILES.items()}
