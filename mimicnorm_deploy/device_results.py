"""A device's results: the bench JSONs a device run wrote, summarised and packed to carry home.

Layout of a results directory (what `scripts/jetson/run.sh` writes, and what `unbundle` restores under
`RUN_DIR/devices/<target>/` on the workstation, where `report` finds it):

    <norm>/bench/<variant>.json    bench records (engines.bench's schema; timing_source harness or trtexec)
    <norm>/trtexec/<variant>/      trtexec's logs and exports, when built with --trtexec
    device/                        recorded outputs: nv_tegra_release, nvpmodel -q, jetson_clocks --show
    summary.md                     one table: latency, throughput, power and energy per image
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engines.artifacts import MANIFEST_NAME, atomic_write_text, read_json
from engines.errors import UserError
from engines.jetson import BOARD_RAIL
from engines.schemas import BENCH
from mimicnorm_deploy.bundle import BUNDLE_MANIFEST_NAME, write_archive

SUMMARY_NAME = "summary.md"
LEFT_BEHIND = (".plan", ".cache")  # engines and timing caches are rebuilt per device: not carried home


def device_benches(results_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Engine name ("<norm>/<variant>") -> bench record, for every <norm>/bench/<variant>.json."""
    root = Path(results_dir)
    return {f"{path.parent.parent.name}/{path.stem}": read_json(path, *BENCH)
            for path in sorted(root.glob("*/bench/*.json")) if path.name != MANIFEST_NAME}  # fmt: skip


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_summary(benches: dict[str, dict[str, Any]], target: str) -> str:
    lines = [
        f"# Device results: {target}",
        "",
        "Latency in ms (host: submit to outputs ready); power is the board's input rail "
        f"({BOARD_RAIL}) sampled by tegrastats during a dedicated run at that batch size.",
        "",
        "| engine | precision | timing | batch | p50 | p99 | img/s | mean power mW | mJ/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, bench in benches.items():
        for entry in bench.get("latency", []):
            power = entry.get("power", {})
            lines.append("| " + " | ".join([
                name, str(bench["engine"].get("precision")), entry.get("timing_source", "harness"),
                str(entry["batch_size"]), _num(entry["p50_ms"], ".3f"), _num(entry["p99_ms"], ".3f"),
                _num(entry["throughput_ips"], ".0f"), _num(power.get("mean_power_mw", {}).get(BOARD_RAIL), ".0f"),
                _num(power.get("energy_per_image_mj"), ".3f"),
            ]) + " |")  # fmt: skip
    environments = [b["environment"] for b in benches.values() if b.get("environment")]
    jetson = environments[0].get("jetson", {}) if environments else {}
    if jetson:
        facts = ", ".join(f"{key} {value}" for key, value in jetson.items())
        lines += ["", f"Device: {facts}."]
    return "\n".join(lines) + "\n"


def pack_results(results_dir: str | os.PathLike, target: str, out: str | os.PathLike) -> dict[str, Any]:
    """Write summary.md into `results_dir`, then pack the directory (no engines) as a checked archive."""
    root = Path(results_dir)
    benches = device_benches(root)
    if not benches:
        raise UserError(f"{root}: no bench results (<norm>/bench/<variant>.json); run the benchmarks first")
    atomic_write_text(root / SUMMARY_NAME, render_summary(benches, target))
    files = {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*"))
             if path.is_file() and not path.name.endswith(LEFT_BEHIND) and path.name != BUNDLE_MANIFEST_NAME}
    return write_archive(out, files, {"kind": "device-results", "target": {"name": target},
                                      "engines": [{"name": name, "kind": "results"} for name in benches]})


# --- the run report's device columns ------------------------------------------------------------

DEVICES_DIR = "devices"  # RUN_DIR/devices/<target>/: results unbundled from each device


def device_sections(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Target -> engine name -> {"precision", "latency": {batch: p50, p99, img/s, mJ/image}}."""
    sections = {}
    for directory in sorted(Path(run_dir, DEVICES_DIR).glob("*/")):
        engines = {}
        for name, bench in device_benches(directory).items():
            engines[name] = {
                "precision": bench["engine"].get("precision"),
                "device": bench["engine"].get("device", {}).get("name"),
                "latency": {str(e["batch_size"]): {
                    "p50_ms": e["p50_ms"], "p99_ms": e["p99_ms"], "throughput_ips": e["throughput_ips"],
                    "timing_source": e.get("timing_source", "harness"),
                    "energy_per_image_mj": e.get("power", {}).get("energy_per_image_mj"),
                } for e in bench.get("latency", [])},
            }  # fmt: skip
        if engines:
            sections[directory.name] = engines
    return sections


def render_device_table(report: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Markdown lines: one row per model and engine, batch-1 p50 and largest-batch throughput per device
    (this run's CPU engines first, then each device's), and energy per image where power was sampled."""
    devices = report.get("devices", {})
    if not devices:
        return []
    columns: dict[str, dict[str, dict[str, Any]]] = {"cpu": {
        f"{norm}/{variant}": {"latency": engine["latency"]}
        for norm, model in report["models"].items() for variant, engine in model["engines"].items()}}  # fmt: skip
    columns.update(devices)
    rows = sorted({name for engines in columns.values() for name in engines})
    header = ["model", "engine"]
    for device in columns:
        header += [f"{device} b1 p50 ms", f"{device} img/s (largest batch)"]
        if device != "cpu":
            header.append(f"{device} mJ/image")
    lines = ["", "## Latency by device", "",
             "Each device's engines built there from the bundled files (`bundle`, `scripts/jetson/run.sh`); "
             "`n/a`: not built on that device.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for name in rows:
        norm, variant = name.split("/", 1)
        cells = [labels.get(norm, norm), variant]
        for device, engines in columns.items():
            latency = engines.get(name, {}).get("latency", {})
            largest = latency[max(latency, key=int)] if latency else {}
            cells += [_num(latency.get("1", {}).get("p50_ms"), ".3f"), _num(largest.get("throughput_ips"), ".0f")]
            if device != "cpu":
                cells.append(_num(largest.get("energy_per_image_mj"), ".3f"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines
