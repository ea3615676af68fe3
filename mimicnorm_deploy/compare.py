"""`mimicnorm-deploy compare`: latency of engines across runs, precisions and machines, with the
uncertainty the raw samples carry.

Inputs are bench JSONs, directories holding them (a run directory, a folder of imported trtexec
results) or a run's report JSON. Engines are paired by model (arch), norm, variant and batch
size; each pair gets the ratio of medians with a bootstrap interval (latency_stats). Within one
input the pairs are the product's questions (MimicNorm vs BN-folded at each variant, each
variant vs FP32); across inputs, every engine of each input against the same engine of the
baseline (the first input unless --baseline names another).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.artifacts import read_json
from engines.bench import LatencyResult
from engines.errors import UserError
from engines.schemas import BENCH, REPORT
from mimicnorm_deploy.latency_stats import TOLERANCE, RatioEstimate, ratio_of_medians
from mimicnorm_deploy.layout import NORM_LABELS, NORMS_COMPARED

REFERENCE_VARIANT = "fp32"


@dataclass
class Measurement:
    """One engine's latency as one bench JSON (or report entry) recorded it."""

    source: str  # the input it came from, as the user named it
    path: str  # the file it was read from
    arch: str
    norm: str
    variant: str
    engine: dict  # the engine manifest
    latency: dict[int, LatencyResult]
    inputs: list[dict] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    session: dict | None = None
    accuracy: float | None = None
    memory: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.arch, self.norm, self.variant)

    @property
    def device(self) -> str:
        """Where it ran: the engine's target where the manifest names one, else its device's name."""
        return self.engine.get("target") or (self.engine.get("device") or {}).get("name") or "unknown device"

    @property
    def label(self) -> str:
        return " ".join(part for part in (self.arch, NORM_LABELS.get(self.norm, self.norm), self.variant) if part)

    @property
    def image_shape(self) -> tuple | None:
        # Everything but the batch dim of the first input: what tells two models apart by name.
        return tuple(self.inputs[0]["shape"][1:]) if self.inputs else None


def measurement_from_bench(record: dict, source: str, path: str) -> Measurement:
    """A Measurement from a bench JSON payload; one-line UserError where samples are missing."""
    labels = record.get("model") or _labels_from_path(Path(path))
    engine = record.get("engine") or {}
    latency = {}
    for entry in record.get("latency", []):
        result = LatencyResult.from_dict(entry, path)
        latency[result.batch_size] = result
    accuracy = (record.get("accuracy") or {}).get("accuracy")
    return Measurement(
        source=source, path=path, arch=labels.get("arch", ""), norm=labels.get("norm", ""),
        variant=labels.get("variant") or engine.get("precision", "?"), engine=engine, latency=latency,
        inputs=record.get("inputs", []), environment=record.get("environment", {}), session=record.get("session"),
        accuracy=accuracy, memory=record.get("memory", {}),
    )  # fmt: skip


def _labels_from_path(path: Path) -> dict[str, str]:
    # Bench JSONs written without labels (a device run, an import) sit at <norm>/bench/<variant>.json.
    if path.parent.name == "bench":
        return {"norm": path.parent.parent.name, "variant": path.stem}
    return {}


def load_measurements(source: str | os.PathLike) -> list[Measurement]:
    """Every engine with latency samples in a bench JSON, a report JSON or a directory of bench JSONs."""
    path = Path(source)
    name = os.fspath(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if _schema_of(p) == BENCH[0])
        if not files and (path / "report" / "report.json").is_file():
            return load_measurements(path / "report" / "report.json")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"{source}: no such file or directory; pass bench JSONs, run directories or report JSONs")
    measurements = []
    for file in files:
        schema = _schema_of(file)
        if schema == REPORT[0]:
            measurements += _from_report(read_json(file, *REPORT), name, str(file))
            continue
        record = read_json(file, *BENCH)
        if record.get("latency"):
            measurements.append(measurement_from_bench(record, name, str(file)))
    if not measurements:
        raise UserError(f"{source}: no engine with latency measurements; run 'mimicnorm-deploy bench' first")
    return measurements


def _schema_of(path: Path) -> str | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return document.get("schema") if isinstance(document, dict) else None


def _from_report(report: dict, source: str, path: str) -> list[Measurement]:
    measurements = []
    for norm, model in report.get("models", {}).items():
        for variant, entry in model.get("engines", {}).items():
            if entry.get("latency"):
                record = {**entry, "model": {"arch": model.get("arch", ""), "norm": norm, "variant": variant},
                          "engine": {"precision": entry["precision"], "device": entry["device"]},
                          "accuracy": {"accuracy": entry.get("accuracy")},
                          "latency": list(entry["latency"].values())}  # fmt: skip
                measurements.append(measurement_from_bench(record, source, path))
    return measurements


# --- pairing --------------------------------------------------------------------------------------


@dataclass
class PairRow:
    """Latency of `a` over `b` at one batch size."""

    group: str  # what is compared: "MimicNorm vs BN-folded", "int8-per-channel.cpu vs fp32", "B vs A"
    a: Measurement
    b: Measurement
    batch_size: int
    estimate: RatioEstimate
    against_baseline: bool = False  # a candidate input's engine over the baseline input's

    def to_dict(self) -> dict:
        return {
            "group": self.group, "a": self.a.label, "a_source": self.a.source, "b": self.b.label,
            "b_source": self.b.source, "batch_size": self.batch_size,
            "a_p50_ms": self.a.latency[self.batch_size].p50_ms, "b_p50_ms": self.b.latency[self.batch_size].p50_ms,
            "ratio": self.estimate.to_dict(), "against_baseline": self.against_baseline,
        }  # fmt: skip


def compare_pair(
    a: Measurement, b: Measurement, group: str, tolerance: float = TOLERANCE, against_baseline: bool = False
) -> list[PairRow]:
    """Rows for every batch size both engines were measured at."""
    _check_same_model(a, b)
    rows = []
    for batch in sorted(set(a.latency) & set(b.latency)):
        ra, rb = a.latency[batch], b.latency[batch]
        paired = (
            a.session is not None and b.session is not None and a.session.get("id") == b.session.get("id")
            and ra.rounds is not None and rb.rounds is not None and len(ra.rounds) == len(rb.rounds)
        )  # fmt: skip
        estimate = ratio_of_medians(ra.samples_ms, rb.samples_ms, rounds_a=ra.rounds, rounds_b=rb.rounds,
                                    paired=paired, tolerance=tolerance)  # fmt: skip
        rows.append(PairRow(group, a, b, batch, estimate, against_baseline))
    return rows


def _check_same_model(a: Measurement, b: Measurement) -> None:
    if a.key == b.key and a.image_shape and b.image_shape and a.image_shape != b.image_shape:
        raise UserError(
            f"{a.path} and {b.path}: different models under one name ({a.label} takes "
            f"{'x'.join(map(str, a.image_shape))}, the other {'x'.join(map(str, b.image_shape))}); "
            "compare runs of the same model"
        )


def within_run_pairs(measurements: list[Measurement], tolerance: float = TOLERANCE) -> list[PairRow]:
    """The product's questions inside one input: MimicNorm vs BN-folded at each variant, then each
    variant vs FP32 for each norm (skipping what the input lacks)."""
    # Only engines on the same device are paired: across devices is what several inputs are for.
    by_key = {(m.device, *m.key): m for m in measurements}
    rows: list[PairRow] = []
    first, second = NORMS_COMPARED
    twin_group = f"{NORM_LABELS[first]} vs {NORM_LABELS[second]}"
    for (device, arch, norm, variant), m in by_key.items():
        if norm == first and (device, arch, second, variant) in by_key:
            rows += compare_pair(m, by_key[(device, arch, second, variant)], twin_group, tolerance)
    for (device, arch, norm, variant), m in by_key.items():
        reference = (device, arch, norm, REFERENCE_VARIANT)
        if variant != REFERENCE_VARIANT and reference in by_key:
            rows += compare_pair(m, by_key[reference], f"{variant} vs {REFERENCE_VARIANT}", tolerance)
    return rows


def across_source_pairs(
    baseline: list[Measurement], candidate: list[Measurement], tolerance: float = TOLERANCE
) -> list[PairRow]:
    """Each candidate engine against the same engine of the baseline. Two inputs of one engine
    each are paired whatever their labels (e.g. two imported trtexec results)."""
    group = f"{candidate[0].source} vs {baseline[0].source}"
    if len(baseline) == 1 and len(candidate) == 1:
        return compare_pair(candidate[0], baseline[0], group, tolerance, against_baseline=True)
    base = {m.key: m for m in baseline}
    rows = []
    for m in candidate:
        if m.key in base:
            rows += compare_pair(m, base[m.key], group, tolerance, against_baseline=True)
    return rows


# --- the comparison -------------------------------------------------------------------------------


@dataclass
class Comparison:
    sources: dict[str, list[Measurement]]
    baseline: str | None
    rows: list[PairRow]
    tolerance: float

    def regressions(self, max_slowdown: float) -> list[PairRow]:
        """Across-input rows where the candidate is slower than the baseline by more than
        `max_slowdown` (a fraction) and the slowdown is detectable (the interval lies above 1)."""
        return [
            row for row in self.rows
            if row.against_baseline and row.estimate.value > 1 + max_slowdown and row.estimate.low > 1
        ]  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline,
            "tolerance": self.tolerance,
            "sources": {name: [m.path for m in ms] for name, ms in self.sources.items()},
            "pairs": [row.to_dict() for row in self.rows],
        }


def compare_sources(
    sources: list[str], baseline: str | None = None, tolerance: float = TOLERANCE
) -> Comparison:
    """Load every input and pair its engines: within each input, and each input against the baseline."""
    if not sources:
        raise UserError("nothing to compare; pass bench JSONs, run directories or report JSONs")
    if len(set(sources)) != len(sources):
        raise UserError("an input is named twice; pass each bench JSON or run directory once")
    loaded = {source: load_measurements(source) for source in sources}
    if baseline is not None and baseline not in loaded:
        raise UserError(f"--baseline {baseline!r} is not one of the inputs ({', '.join(loaded)})")
    base = baseline if baseline is not None else (sources[0] if len(sources) > 1 else None)
    rows: list[PairRow] = []
    for name in sources:
        rows += within_run_pairs(loaded[name], tolerance)
    for name in sources:
        if base is not None and name != base:
            across = across_source_pairs(loaded[base], loaded[name], tolerance)
            if not across:
                raise UserError(f"{name}: no engine matches one of {base} by model, norm, variant and batch size; "
                                "compare runs of the same models")  # fmt: skip
            rows += across
    return Comparison(loaded, base, rows, tolerance)


# --- rendering ------------------------------------------------------------------------------------


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_markdown(comparison: Comparison) -> str:
    lines = [
        "# Latency comparison",
        "",
        "Ratio of median latencies (first over second) with a 95 % bootstrap interval from the raw samples; above 1: "
        f"the first is slower. *No detectable difference*: the interval includes 1 or stays within "
        f"±{100 * comparison.tolerance:.0f} %. Pairs timed in the same interleaved rounds are resampled by round.",
    ]
    groups: dict[str, list[PairRow]] = {}
    for row in comparison.rows:
        groups.setdefault(row.group, []).append(row)
    for group, rows in groups.items():
        lines += ["", f"## {group}", "",
                  "| engine | vs | batch | p50 ms | vs p50 ms | ratio [95 % interval] | verdict |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in rows:
            est = row.estimate
            lines.append(_row([
                row.a.label, row.b.label, str(row.batch_size), f"{row.a.latency[row.batch_size].p50_ms:.3f}",
                f"{row.b.latency[row.batch_size].p50_ms:.3f}", f"{est.value:.3f} [{est.low:.3f}, {est.high:.3f}]",
                est.verdict + (" (paired rounds)" if est.paired else ""),
            ]))  # fmt: skip
    if not comparison.rows:
        lines += ["", "Nothing to pair: give two inputs, or a run with both norms or with FP32 and another variant."]
    lines += ["", *render_device_tables(comparison.sources)]
    return "\n".join(lines) + "\n"


def render_device_tables(sources: dict[str, list[Measurement]]) -> list[str]:
    """Per engine, its latency on every input side by side; then each input's fingerprint."""
    lines = ["## Per engine and input", "",
             "| engine | batch | input | p50 ms | p90 ms | p99 ms | img/s | timing |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    keys: dict[tuple, str] = {}
    for measurements in sources.values():
        for m in measurements:
            keys.setdefault(m.key, m.label)
    for key, label in keys.items():
        for name, measurements in sources.items():
            for m in (m for m in measurements if m.key == key):
                for batch, r in sorted(m.latency.items()):
                    lines.append(_row([label, str(batch), name, f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}",
                                       f"{r.p99_ms:.3f}", f"{r.throughput_ips:.0f}", _timing_text(r)]))  # fmt: skip
    lines += ["", "## Where each input was measured", ""]
    for name, measurements in sources.items():
        lines.append(f"- **{name}**: {describe_environment(measurements[0].environment)}")
    return lines


def _timing_text(result: LatencyResult) -> str:
    device = result.device_timing_keys()
    what = "host" + (" + " + ", ".join(key.removesuffix("_ms") for key in device) if device else " only")
    return f"{result.timing_source}: {what}"


def describe_environment(environment: dict[str, Any]) -> str:
    """One line: CPU, cores, load before/after, GPU or Jetson, key library versions."""
    if not environment:
        return "no environment fingerprint recorded"
    cpu = environment.get("cpu", {})
    parts = [f"{cpu.get('model_name', '?')} ({cpu.get('arch', '?')}, {cpu.get('logical_cores', '?')} cores"
             + (f", affinity {len(cpu['affinity'])}" if cpu.get("affinity") else "") + ")"]  # fmt: skip
    before, after = environment.get("load_average_before"), environment.get("load_average_after")
    if before and after:
        parts.append(f"load {before[0]:.2f} before / {after[0]:.2f} after")
    for gpu in environment.get("gpus", []):
        parts.append(f"{gpu.get('name')} (driver {gpu.get('driver_version')}, SM {gpu.get('clocks.sm')})")
    jetson = environment.get("jetson")
    if jetson:
        parts.append(f"Jetson L4T {jetson.get('l4t')}, power mode {jetson.get('power_mode', '?')}")
    versions = environment.get("versions", {})
    parts.append(", ".join(f"{k} {v}" for k, v in versions.items() if k in ("onnxruntime", "tensorrt", "torch")))
    parts.append(f"host {environment.get('host', '?')}, {environment.get('taken', '?')}")
    return "; ".join(p for p in parts if p)


def render_html(comparison: Comparison) -> str:
    """The comparison as one self-contained HTML page: ratio intervals, latency ECDFs, inputs."""
    from mimicnorm_deploy import html_page as h

    groups: dict[str, list[PairRow]] = {}
    for row in comparison.rows:
        groups.setdefault(row.group, []).append(row)
    sections = [h.section("method", "How to read this", h.note(
        "Ratio of median latencies (first over second), 95 % bootstrap interval from the raw samples; above 1: the "
        f"first is slower. No detectable difference: the interval includes 1 or stays within "
        f"±{100 * comparison.tolerance:.0f} %."))]  # fmt: skip
    for index, (group, rows) in enumerate(groups.items()):
        chart = h.interval_chart(
            [(f"{r.a.label} / {r.b.label}, b{r.batch_size}", r.estimate.value, r.estimate.low, r.estimate.high)
             for r in rows], "ratio of median latencies")  # fmt: skip
        table = h.table(["engine", "vs", "batch", "ratio", "95 % interval", "verdict"], [
            [r.a.label, r.b.label, r.batch_size, f"{r.estimate.value:.3f}",
             f"[{r.estimate.low:.3f}, {r.estimate.high:.3f}]", r.estimate.verdict] for r in rows])  # fmt: skip
        ecdfs = [
            f"<h3>{h.escape(r.a.label)} vs {h.escape(r.b.label)}, batch {r.batch_size}</h3>" + h.ecdf_chart({
                f"{r.a.label} ({r.a.source})": r.a.latency[r.batch_size].samples_ms,
                f"{r.b.label} ({r.b.source})": r.b.latency[r.batch_size].samples_ms,
            }) for r in rows
        ]  # fmt: skip
        sections.append(h.section(f"group-{index}", group, chart, table, *ecdfs))
    environment_rows = [[name, describe_environment(ms[0].environment)] for name, ms in comparison.sources.items()]
    sections.append(h.section("environment", "Where each input was measured",
                              h.table(["input", "machine"], environment_rows)))  # fmt: skip
    return h.page("Latency comparison", sections)
