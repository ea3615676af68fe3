"""The run report: one versioned JSON, a Markdown page and a PNG, MimicNorm vs BN-folded side by
side, FP32 vs INT8 (per-tensor, per-channel). Reads only JSON artifacts, so it needs no torch."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from engines.artifacts import atomic_path, atomic_write_text, now_utc, read_json, write_json
from engines.errors import UserError
from engines.schemas import BENCH, CALIBRATION, REPORT, TRAIN_REPORT
from mimicnorm_deploy.device_results import device_sections, render_device_table
from mimicnorm_deploy.layout import NORMS_COMPARED, SIMULATED_SUFFIX, VARIANTS, RunLayout

NORM_LABELS = {"mimic": "MimicNorm", "bn": "BN-folded"}


def build_report(run_dir: str | os.PathLike) -> dict[str, Any]:
    layout = RunLayout(Path(run_dir))
    models = {norm: _model_section(layout, norm) for norm in NORMS_COMPARED if layout.train_report(norm).is_file()}
    if not models:
        raise UserError(f"{run_dir}: no trained model found (expected */train_report.json); run 'demo' or 'train'")
    return {
        "created": now_utc(),
        "rendered_on": platform.platform(),
        "models": models,
        "comparisons": _comparisons(models),
        "devices": device_sections(run_dir),  # results unbundled from Jetsons (mimicnorm_deploy.device_results)
    }


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
            "precision": bench["engine"]["precision"],
            "accuracy": accuracy.get("accuracy"),
            "top1_agreement_vs_fp32": accuracy.get("top1_agreement"),
            "logits_sqnr_db_vs_fp32": accuracy.get("logits_sqnr_db"),
            "device": bench["engine"]["device"],  # where this engine was built and measured
            "latency": {str(r["batch_size"]): r for r in bench.get("latency", [])},
            "memory": bench.get("memory", {}),
        }
        simulated = layout.bench(norm, variant + SIMULATED_SUFFIX)
        if simulated.is_file():
            entry["simulated_accuracy"] = read_json(simulated, *BENCH)["accuracy"]["accuracy"]
        if variant != "fp32" and layout.calibration_record(norm, variant).is_file():
            calibration = read_json(layout.calibration_record(norm, variant), *CALIBRATION)
            entry["calibration"] = {
                "target": calibration["target"],
                "per_channel": calibration["quantize"]["config"]["per_channel"],
                "activations": calibration["quantize"]["config"]["activations"],
                "reduce_range": calibration["quantize"]["config"]["reduce_range"],
                "calibration_images": calibration["quantize"]["num_calibration_images"],
                "worst_weight_spread": calibration["worst_weight_spread"],
            }
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _comparisons(models: dict[str, Any]) -> dict[str, Any]:
    """Ratios as pairs of quantiles (p50 and p90) rather than one number, so their spread shows."""
    out: dict[str, Any] = {"int8_vs_fp32": {}}
    if "mimic" in models and "bn" in models:
        mimic, bn = models["mimic"]["train"], models["bn"]["train"]
        out["mimic_vs_bn"] = {
            "activation_memory_ratio": _ratio(mimic["activation_memory"]["bytes"], bn["activation_memory"]["bytes"]),
            "step_time_ratio": {q: _ratio(mimic["step_ms_percentiles"].get(q), bn["step_ms_percentiles"].get(q))
                                for q in ("p10", "p50", "p90")},
            "test_accuracy_difference": mimic["final_test_accuracy"] - bn["final_test_accuracy"],
        }  # fmt: skip
    for norm, model in models.items():
        engines = model["engines"]
        fp32 = engines.get("fp32")
        if fp32 is None:
            continue
        per_norm = {}
        for variant, entry in engines.items():
            if variant == "fp32":
                continue
            latency_ratio = {
                batch: {q: _ratio(entry["latency"][batch][f"{q}_ms"], fp32["latency"][batch][f"{q}_ms"])
                        for q in ("p50", "p90")}
                for batch in entry["latency"] if batch in fp32["latency"]
            }  # fmt: skip
            per_norm[variant] = {
                "latency_ratio": latency_ratio,
                "accuracy_drop": _difference(fp32["accuracy"], entry["accuracy"]),
                "simulated_accuracy_drop": _difference(fp32["accuracy"], entry.get("simulated_accuracy")),
            }
        out["int8_vs_fp32"][norm] = per_norm
    return out


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


# --- rendering ----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_markdown(report: dict[str, Any]) -> str:
    devices = {
        f"{d.get('name', '?')}: {d.get('model_name', '?')} ({d.get('arch', '?')}, INT8 dot product: "
        f"{d.get('int8_dot_product')})"
        for model in report["models"].values() for e in model["engines"].values() for d in [e["device"]]
    }  # fmt: skip
    lines = [
        "# mimicnorm-deploy report",
        "",
        f"Created {report['created']}. Engines measured on: {'; '.join(sorted(devices)) or 'n/a'}.",
        "",
        "## Training",
        "",
        "| model | arch | epochs | test acc % | activation memory saved for backward | batch | mean step ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for norm, model in report["models"].items():
        train = model["train"]
        memory = train["activation_memory"]
        lines.append(_row([
            NORM_LABELS.get(norm, norm), model["arch"], str(train["epochs"]), _pct(train["final_test_accuracy"]),
            f"{memory['bytes'] / 2**20:.1f} MiB", str(memory["batch_size"]), _num(train["mean_step_ms"], ".1f"),
        ]))  # fmt: skip
    lines += [
        "",
        "## Engines (ONNX Runtime, CPU)",
        "",
        "Accuracy on the test split; *simulated* runs Q/DQ as float ops (graph optimizations off), the other column "
        "uses ONNX Runtime's INT8 kernels. Latency in ms, SingleStream (next query after the previous returns).",
        "",
        "| model | engine | acc % | simulated acc % | top-1 agree % | SQNR dB | b1 p50 | b1 p90 | b1 p99 "
        "| b64 p50 | b64 img/s | peak RSS MiB | file KiB | worst weight spread |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for norm, model in report["models"].items():
        for variant, e in model["engines"].items():
            b1, b64 = e["latency"].get("1", {}), e["latency"].get("64", {})
            spread = e.get("calibration", {}).get("worst_weight_spread")
            spread_text = f"{spread['spread']:.1f}x ({spread['name']})" if spread else ""
            lines.append(_row([
                NORM_LABELS.get(norm, norm), variant, _pct(e["accuracy"]), _pct(e.get("simulated_accuracy")),
                _pct(e["top1_agreement_vs_fp32"]), _num(e["logits_sqnr_db_vs_fp32"], ".1f"),
                _num(b1.get("p50_ms"), ".3f"), _num(b1.get("p90_ms"), ".3f"), _num(b1.get("p99_ms"), ".3f"),
                _num(b64.get("p50_ms"), ".2f"), _num(b64.get("throughput_ips"), ".0f"),
                _num(e["memory"].get("peak_rss_bytes", 0) / 2**20, ".0f"),
                _num(e["memory"].get("model_file_bytes", 0) / 2**10, ".0f"), spread_text,
            ]))  # fmt: skip
    lines += render_device_table(report, NORM_LABELS)
    comparisons = report["comparisons"]
    lines += ["", "## Ratios", ""]
    if "mimic_vs_bn" in comparisons:
        c = comparisons["mimic_vs_bn"]
        step = c["step_time_ratio"]
        lines += [
            f"- MimicNorm / BN activation memory saved for backward: **{_num(c['activation_memory_ratio'], '.3f')}**",
            f"- MimicNorm / BN training step time: p10 {_num(step['p10'], '.3f')}, **p50 {_num(step['p50'], '.3f')}**, "
            f"p90 {_num(step['p90'], '.3f')}",
            f"- MimicNorm - BN test accuracy: {_num(100 * c['test_accuracy_difference'], '+.2f')} points",
        ]
    for norm, variants in comparisons["int8_vs_fp32"].items():
        for variant, c in variants.items():
            ratios = ", ".join(
                f"batch {batch}: p50 {_num(r['p50'], '.3f')} / p90 {_num(r['p90'], '.3f')}"
                for batch, r in c["latency_ratio"].items()
            )
            drop = c["accuracy_drop"]
            sim_drop = c["simulated_accuracy_drop"]
            lines.append(
                f"- {NORM_LABELS.get(norm, norm)} {variant} / FP32 latency: {ratios}; accuracy drop "
                f"{_num(None if drop is None else 100 * drop, '+.2f')} points "
                f"(simulated {_num(None if sim_drop is None else 100 * sim_drop, '+.2f')})"
            )
    return "\n".join(lines) + "\n"


def render_plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = list(report["models"])
    variants = [v for v in VARIANTS if any(v in report["models"][n]["engines"] for n in norms)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / max(1, len(norms))
    panels = [
        ("test accuracy %", lambda e: 100 * (e["accuracy"] or 0)),
        ("batch-1 p50 latency (ms)", lambda e: e["latency"].get("1", {}).get("p50_ms", 0)),
        ("batch-64 throughput (img/s)", lambda e: e["latency"].get("64", {}).get("throughput_ips", 0)),
    ]
    for ax, (title, value) in zip(axes, panels, strict=True):
        for i, norm in enumerate(norms):
            engines = report["models"][norm]["engines"]
            xs = [j + i * width for j, v in enumerate(variants) if v in engines]
            ys = [value(engines[v]) for v in variants if v in engines]
            ax.bar(xs, ys, width, label=NORM_LABELS.get(norm, norm))
        ax.set_xticks([j + width * (len(norms) - 1) / 2 for j in range(len(variants))], variants)
        ax.set_title(title)
        if title.startswith("test accuracy"):
            low = min((value(report["models"][n]["engines"][v]) for n in norms for v in variants
                       if v in report["models"][n]["engines"]), default=0)  # fmt: skip
            ax.set_ylim(max(0, low - 5), 100)
    axes[0].legend()
    fig.suptitle("MimicNorm vs BN-folded: ONNX Runtime CPU engines")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    report = build_report(run_dir)
    out = Path(out_dir) if out_dir is not None else RunLayout(Path(run_dir)).report_dir
    paths = {
        "json": write_json(out / "report.json", *REPORT, report),
        "markdown": atomic_write_text(out / "report.md", render_markdown(report)),
        "plot": render_plot(report, out / "report.png"),
    }
    return paths
