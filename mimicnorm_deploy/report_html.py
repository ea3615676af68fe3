"""The run report as one self-contained HTML page (inline SVG, no script, no network).

Sections, in the order people read them: MimicNorm vs BN-folded, precisions vs FP32, latency
distributions (ECDFs of the raw samples), the batch sweep, memory, accuracy against precision,
per-layer SQNR, the precision plans, every engine in detail, the TensorRT artifacts, where it
was measured, training.
"""

from __future__ import annotations

from typing import Any

from mimicnorm_deploy import html_page as h
from mimicnorm_deploy.compare import Measurement, describe_environment
from mimicnorm_deploy.layout import NORM_LABELS, PLAN_VARIANT, TENSORRT_VARIANT
from mimicnorm_deploy.report import NOT_MEASURED, PER_TENSOR_NOTE, RATIO_NOTE, points_lost

SECTION_IDS = ("twins", "pertensor", "precisions", "latency", "sweep", "memory", "accuracy", "sqnr", "plan", "engines",
               "tensorrt", "environment", "training")  # fmt: skip


def _norm(norm: str) -> str:
    return NORM_LABELS.get(norm, norm)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def render_html(report: dict[str, Any], measurements: list[Measurement]) -> str:
    sections = [
        _pairs_section("twins", f"{NORM_LABELS['mimic']} vs {NORM_LABELS['bn']} at each precision", report,
                       report["comparisons"]["twins"]),
        _per_tensor_section(report),
        _pairs_section("precisions", "Each precision against FP32", report, report["comparisons"]["precisions"]),
        _latency_section(measurements),
        _sweep_section(measurements),
        _memory_section(measurements),
        _accuracy_section(report),
        _sqnr_section(report),
        _plan_section(report),
        _engines_section(measurements),
        _tensorrt_section(report),
        _environment_section(measurements),
        _training_section(report),
    ]  # fmt: skip
    return h.page("mimicnorm-deploy report", [h.note(f"Created {report['created']}."), *sections])


def _per_tensor_section(report: dict[str, Any]) -> str:
    rows, refusals = report.get("per_tensor_int8", []), report.get("fp16_refusals", [])
    plans = [a for a in report["tensorrt_artifacts"] if a.get("variant") == PLAN_VARIANT]
    title = "Per-tensor INT8: what folding BN costs"
    if not (rows or plans or refusals):
        return h.section("pertensor", title, h.note("no per-tensor INT8 engine in this run"))
    parts = [h.note(PER_TENSOR_NOTE)]
    parts.append(h.table(
        ["model", "INT8", "FP32 acc %", "INT8 acc %", "drop (points)", "simulated acc %", "per-channel acc %",
         "worst weight-range spread"],
        [[_norm(r["norm"]), r["what"], _pct(r["fp32_accuracy"]), _pct(r["accuracy"]),
          _num(points_lost(r["fp32_accuracy"], r["accuracy"]), "+.2f"), _pct(r["simulated_accuracy"]),
          _pct(r["per_channel_accuracy"]),
          f"{r['worst_weight_spread']['spread']:.1f}x ({r['worst_weight_spread']['node']})"
          if r["worst_weight_spread"] else "n/a"] for r in rows]))  # fmt: skip
    if plans:
        parts.append(h.note("Gated plans for TensorRT: symmetric per-tensor INT8, the most sensitive layers moved out "
                            "of INT8 until the held-out calibration images pass the gate; accuracy simulated on the "
                            "test split."))  # fmt: skip
        parts.append(h.table(["model", "plan", "acc %", "drop vs FP32 (points)"], [
            [_norm(p["norm"]), p["what"], _pct(p["simulated_accuracy"]),
             _num(points_lost(_fp32_accuracy(report, p["norm"]), p["simulated_accuracy"]), "+.2f")]
            for p in plans]))  # fmt: skip
    if refusals:
        parts.append(h.note("FP16 products refused (FP16's largest value is 65504):"))
        parts.append(h.table(["model", "product", "what", "why", "instead"],
                             [[_norm(r["norm"]), r["product"], r["what"], r["reason"], r["instead"]]
                              for r in refusals]))  # fmt: skip
    return h.section("pertensor", title, *parts)


def _fp32_accuracy(report: dict[str, Any], norm: str) -> float | None:
    return report["models"].get(norm, {}).get("engines", {}).get("fp32", {}).get("accuracy")


def _pair_label(pair: dict[str, Any]) -> str:
    a, b = pair["a"], pair["b"]
    if a["norm"] != b["norm"]:
        return f"{a['variant']}, batch {pair['batch_size']} ({a['device']})"
    return f"{_norm(a['norm'])} {a['variant']}, batch {pair['batch_size']} ({a['device']})"


def _pairs_section(section_id: str, title: str, report: dict[str, Any], pairs: list[dict[str, Any]]) -> str:
    if not pairs:
        return h.section(section_id, title, h.note("no pair of engines with latency measurements in this run"))
    chart = h.interval_chart([(_pair_label(p), p["latency_ratio"]["value"], p["latency_ratio"]["low"],
                               p["latency_ratio"]["high"]) for p in pairs], "latency ratio (median / median)")
    rows = []
    for p in pairs:
        r = p["latency_ratio"]
        drop = p["accuracy_difference"]
        rows.append([_pair_label(p), f"{p['a_p50_ms']:.3f} / {p['b_p50_ms']:.3f}", f"{r['value']:.3f}",
                     f"[{r['low']:.3f}, {r['high']:.3f}]", r["verdict"],
                     _num(None if drop is None else 100 * drop + 0.0, "+.2f"), _num(p["engine_memory_ratio"]),
                     _num(p["model_file_ratio"])])  # fmt: skip
    table = h.table(["pair", "p50 ms", "latency ratio", "95 % interval", "verdict", "accuracy difference (points)",
                     "engine memory ratio", "model file ratio"], rows)  # fmt: skip
    return h.section(section_id, title, h.note(RATIO_NOTE), chart, table)


def _latency_section(measurements: list[Measurement]) -> str:
    batches = sorted({b for m in measurements for b in m.latency})
    parts = [h.note("Empirical CDFs of every timed inference (host latency). A curve to the left is faster; a long "
                    "flat top is a tail of slow inferences.")]  # fmt: skip
    for batch in batches:
        series = {f"{m.label} ({m.device})": m.latency[batch].samples_ms for m in measurements if batch in m.latency}
        parts += [f"<h3>batch {batch}</h3>", h.ecdf_chart(series)]
    if not batches:
        parts.append(h.note("no latency measured in this run"))
    return h.section("latency", "Latency distributions", *parts)


def _sweep_section(measurements: list[Measurement]) -> str:
    throughput = {f"{m.label} ({m.device})": [(b, r.throughput_ips) for b, r in m.latency.items()]
                  for m in measurements if m.latency}  # fmt: skip
    p90 = {f"{m.label} ({m.device})": [(b, r.p90_ms) for b, r in m.latency.items()] for m in measurements if m.latency}
    rows = [[f"{m.label} ({m.device})", b, f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput_ips:.0f}"]
            for m in measurements for b, r in sorted(m.latency.items())]  # fmt: skip
    return h.section(
        "sweep", "Batch sweep: latency against throughput",
        h.note("MLPerf's views: SingleStream is the p90 at batch 1; Offline the best images per second over the batch "
               "sizes (each batch waits for the previous one here, so a lower bound). "
               "`mimicnorm-deploy bench --batch-sizes sweep` measures the full curve."),
        h.line_chart(throughput, "batch size", "images per second"),
        h.line_chart(p90, "batch size", "p90 latency (ms)"),
        h.table(["engine", "batch", "p50 ms", "p90 ms", "img/s"], rows),
    )  # fmt: skip


def _memory_section(measurements: list[Measurement]) -> str:
    rows = []
    for m in measurements:
        memory = m.memory
        if "peak_rss_bytes" not in memory:
            continue
        engine = memory["peak_rss_bytes"] - memory.get("baseline_rss_bytes", 0)
        rows.append([f"{m.label} ({m.device})", memory.get("rss_batch_size", ""),
                     f"{memory['peak_rss_bytes'] / 2**20:.1f}", f"{memory.get('baseline_rss_bytes', 0) / 2**20:.1f}",
                     f"{engine / 2**20:.1f}",
                     f"{memory.get('model_file_bytes', 0) / 2**10:.0f}"])  # fmt: skip
    return h.section("memory", "Memory", h.note(
        "Peak RSS of a fresh process that loads the engine and runs it at the batch size shown; baseline: the same "
        "process after importing its runtime only. One measurement each (no interval)."),
        h.table(["engine", "batch", "peak RSS MiB", "baseline MiB", "engine MiB", "model file KiB"], rows))  # fmt: skip


def _accuracy_section(report: dict[str, Any]) -> str:
    rows = []
    for norm, model in report["models"].items():
        for variant, e in model["engines"].items():
            rows.append([_norm(norm), variant, "this CPU's kernels", _pct(e["accuracy"]),
                         _pct(e.get("simulated_accuracy")), _pct(e["top1_agreement_vs_fp32"]),
                         _num(e["logits_sqnr_db_vs_fp32"], ".1f")])  # fmt: skip
    for artifact in report["tensorrt_artifacts"]:
        if artifact["simulated_accuracy"] is not None:
            measured_on = (artifact.get("calibration") or {}).get("measured_on") or ""
            rows.append([_norm(artifact["norm"]), artifact.get("variant", TENSORRT_VARIANT),
                         f"{artifact['target']}, simulated on {measured_on}", NOT_MEASURED,
                         _pct(artifact["simulated_accuracy"]), "", _num(artifact["logits_sqnr_db"], ".1f")])
    return h.section("accuracy", "Accuracy against precision", h.note(
        "Test-split accuracy with the kernels that run the engine here, and simulated (Q/DQ as float ops), which is "
        "what a TensorRT target's INT8 is expected to approach."),
        h.table(["model", "variant", "where", "accuracy %", "simulated %", "top-1 agreement with FP32 %",
                 "logits SQNR dB"], rows))  # fmt: skip


def _calibrations(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"{_norm(norm)} {variant}", e["calibration"]) for norm, model in report["models"].items()
             for variant, e in model["engines"].items() if e.get("calibration")]  # fmt: skip
    found += [(f"{_norm(a['norm'])} {a.get('variant', TENSORRT_VARIANT)}", a["calibration"])
              for a in report["tensorrt_artifacts"] if a.get("calibration")]  # fmt: skip
    return found


def _sqnr_section(report: dict[str, Any]) -> str:
    series = {label: [(i + 1, layer["output_sqnr_db"]) for i, layer in enumerate(c["layers"])]
              for label, c in _calibrations(report) if c.get("layers")}  # fmt: skip
    if not series:
        return h.section("sqnr", "Per-layer SQNR", h.note("no calibration record with per-layer figures in this run"))
    worst = sorted(((label, layer) for label, c in _calibrations(report) for layer in c["layers"]),
                   key=lambda item: item[1]["output_sqnr_db"])[:10]  # fmt: skip
    return h.section(
        "sqnr", "Per-layer SQNR",
        h.note("Each layer's output in the calibrated model against FP32 (accumulated error, simulated), in graph "
               "order. Lower is worse; a sharp drop marks the layer that loses the signal."),
        h.line_chart(series, "layer (graph order)", "output SQNR (dB)", log_x=False),
        h.table(["variant", "layer", "op", "precision", "output SQNR dB"],
                [[label, layer["node"], layer["op_type"], layer["precision"], f"{layer['output_sqnr_db']:.1f}"]
                 for label, layer in worst]),
    )  # fmt: skip


def _plan_section(report: dict[str, Any]) -> str:
    plans = [(label, c["plan"]) for label, c in _calibrations(report) if c.get("plan")]
    if not plans:
        return h.section("plan", "Precision plan", h.note(
            "No mixed-precision plan in this run: every quantizable layer is INT8. `mimicnorm-deploy calibrate "
            "--max-top1-drop POINTS` plans which layers stay in higher precision."))  # fmt: skip
    parts = []
    for label, plan in plans:
        result = plan.get("result") or {}
        parts.append(f"<h3>{h.escape(label)}</h3>")
        parts.append(h.note(f"gate {plan['gate']}; result: top-1 drop {_num(result.get('top1_drop'), '.4f')}, logits "
                            f"SQNR {_num(result.get('logits_sqnr_db'), '.1f')} dB, passed {result.get('passed')}"))
        parts.append(h.table(["layer", "precision"], list(plan["layers"].items())))
        if plan["moved"]:
            parts.append(h.table(["moved layer", "to", "reason"], [[m["node"], m["to"], m["reason"]]
                                                                 for m in plan["moved"]]))  # fmt: skip
    return h.section("plan", "Precision plan", *parts)


def _engines_section(measurements: list[Measurement]) -> str:
    rows = []
    for m in measurements:
        for batch, r in sorted(m.latency.items()):
            device = ", ".join(k.removesuffix("_ms") for k in r.device_timing_keys()) or "host latency only"
            rows.append([f"{m.label} ({m.device})", batch, r.iterations, f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}",
                         f"{r.p99_ms:.3f}", f"{r.max_ms:.3f}", f"{r.throughput_ips:.0f}", r.timing_source, device,
                         len(r.rounds) if r.rounds else 1])  # fmt: skip
    return h.section("engines", "Engines in detail", h.table(
        ["engine", "batch", "iterations", "p50 ms", "p90 ms", "p99 ms", "max ms", "img/s", "timing", "device split",
         "rounds"], rows))  # fmt: skip


def _tensorrt_section(report: dict[str, Any]) -> str:
    rows = [[_norm(a["norm"]), a["file"], a["target"], a["what"], _pct(a["simulated_accuracy"]),
             (a.get("calibration") or {}).get("measured_on") or "",
             NOT_MEASURED if a["target"] not in report["measured_on"] else "see the device's rows"]
            for a in report["tensorrt_artifacts"]]  # fmt: skip
    return h.section("tensorrt", "Artifacts for TensorRT targets", h.note(
        "Built and timed on the target (`mimicnorm-deploy build` there); bench JSONs from that device copied into "
        "the run appear in every section above."),
        h.table(["model", "file", "target", "what", "simulated acc %", "measured on", "latency"], rows))  # fmt: skip


def _environment_section(measurements: list[Measurement]) -> str:
    by_session: dict[str, list[str]] = {}
    environments: dict[str, dict] = {}
    for m in measurements:
        key = (m.session or {}).get("id") or m.path
        by_session.setdefault(key, []).append(m.label)
        environments[key] = m.environment
    rows = [[", ".join(labels), describe_environment(environments[key])] for key, labels in by_session.items()]
    return h.section("environment", "Where the engines were measured", h.table(["engines", "machine"], rows))


def _training_section(report: dict[str, Any]) -> str:
    rows = [[_norm(norm), m["arch"], m["train"]["epochs"], _pct(m["train"]["final_test_accuracy"]),
             f"{m['train']['activation_memory']['bytes'] / 2**20:.1f}", _num(m["train"]["mean_step_ms"], ".1f")]
            for norm, m in report["models"].items()]  # fmt: skip
    return h.section("training", "Training", h.table(
        ["model", "arch", "epochs", "test acc %", "activation memory MiB (saved for backward)", "mean step ms"], rows))
