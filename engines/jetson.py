"""Jetson facts that move latency and energy figures: clocks, power mode, and tegrastats power samples.

Formats are JetPack's (L4T R36, Orin):
- `jetson_clocks --show`: one line per clock, e.g. `GPU MinFreq=306000000 MaxFreq=918000000
  CurrentFreq=918000000` and `EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000
  FreqOverride=1`; `sudo jetson_clocks` pins GPU MinFreq to MaxFreq and sets the EMC override.
- GPU devfreq in sysfs: `/sys/class/devfreq/<node>.gpu/{cur_freq,min_freq,max_freq}`, Hz; EMC:
  `/sys/kernel/debug/bpmp/debug/clk/emc/rate` (debugfs, root only), Hz.
- `tegrastats` lines: `MM-DD-YYYY HH:MM:SS RAM 2461/7620MB (lfb 3x2MB) ... EMC_FREQ 4%@2133
  GR3D_FREQ 0%@[305] ... VDD_IN 5704mW/5704mW VDD_CPU_GPU_CV 831mW/831mW VDD_SOC 1624mW/1624mW`
  (each rail: instantaneous/running average; older JetPacks print the numbers without `mW`).

Paths are read under a root directory (`MIMICNORM_DEVICE_ROOT`, default `/`) and the commands are
named by environment variables (`NVPMODEL`, `JETSON_CLOCKS`), so tests and the device script can
point them at recorded outputs and a fake sysfs tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT_VARIABLE = "MIMICNORM_DEVICE_ROOT"
TEGRA_RELEASE = "etc/nv_tegra_release"
DEVFREQ = "sys/class/devfreq"
EMC_RATE = "sys/kernel/debug/bpmp/debug/clk/emc/rate"
CUDA_VERSION_JSON = "usr/local/cuda/version.json"
COMMAND_TIMEOUT_S = 10
BOARD_RAIL = "VDD_IN"  # the module's input: what the board draws, the basis of energy per image
_CLOCK_LINE = re.compile(r"^(GPU|EMC) (.*)$")
_RAIL = re.compile(r"\b((?:VDD|POM)_\w+) (\d+)(?:mW)?/(\d+)(?:mW)?")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GPU_LOAD = re.compile(r"\bGR3D_FREQ (\d+)%")


def device_root() -> Path:
    return Path(os.environ.get(ROOT_VARIABLE, "/"))


def run_tool(variable: str, default: str, *args: str) -> str:
    """stdout of the command named by environment `variable` (default `default`), '' if it fails."""
    command = [*shlex.split(os.environ.get(variable, default)), *args]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        if done.returncode == 0:
            return done.stdout
    return ""


def parse_jetson_clocks(text: str) -> dict:
    """GPU and EMC clocks from `jetson_clocks --show` and whether they are locked at their maximum."""
    clocks: dict = {}
    for line in text.splitlines():
        match = _CLOCK_LINE.match(line.strip())
        if not match:
            continue
        fields = dict(item.split("=", 1) for item in match.group(2).split() if "=" in item)
        name = match.group(1).lower()
        for key, label in (("MinFreq", "min_hz"), ("MaxFreq", "max_hz"), ("CurrentFreq", "current_hz")):
            if fields.get(key, "").isdigit():
                clocks[f"{name}_{label}"] = int(fields[key])
        if "FreqOverride" in fields:
            clocks["emc_override"] = fields["FreqOverride"] == "1"
    if {"gpu_min_hz", "gpu_max_hz"} <= clocks.keys():
        # jetson_clocks raises each minimum to its maximum: a pinned GPU is what it changes visibly.
        clocks["clocks_locked"] = clocks["gpu_min_hz"] == clocks["gpu_max_hz"]
    return clocks


def sysfs_clocks(root: Path) -> dict:
    """GPU devfreq (cur/min/max Hz) and the EMC rate where readable."""
    clocks: dict = {}
    for node in sorted((root / DEVFREQ).glob("*gpu*")):
        for name in ("cur_freq", "min_freq", "max_freq"):
            with contextlib.suppress(OSError, ValueError):
                clocks[f"gpu_{name}_hz"] = int((node / name).read_text().strip())
        clocks["gpu_devfreq"] = node.name
        break
    with contextlib.suppress(OSError, ValueError):
        clocks["emc_rate_hz"] = int((root / EMC_RATE).read_text().strip())
    return clocks


def cuda_version(root: Path) -> str | None:
    """CUDA toolkit version from JetPack's /usr/local/cuda/version.json."""
    import json

    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return json.loads((root / CUDA_VERSION_JSON).read_text())["cuda"]["version"]
    return None


# --- tegrastats ---------------------------------------------------------------------------------


def parse_tegrastats_line(line: str) -> dict | None:
    """{"rails_mw": {rail: instantaneous mW}, "ram_used_mb", "gpu_load_percent"}; None for a line without rails."""
    rails = {name: int(now) for name, now, _average in _RAIL.findall(line)}
    if not rails:
        return None
    sample: dict = {"rails_mw": rails}
    ram = _RAM.search(line)
    if ram:
        sample["ram_used_mb"], sample["ram_total_mb"] = int(ram.group(1)), int(ram.group(2))
    load = _GPU_LOAD.search(line)
    if load:
        sample["gpu_load_percent"] = int(load.group(1))
    return sample


def power_summary(lines: list[str]) -> dict:
    """Means over the tegrastats samples of a benchmark window (RAM: peak too)."""
    samples = [s for s in map(parse_tegrastats_line, lines) if s is not None]
    if not samples:
        return {}
    rails = sorted({name for s in samples for name in s["rails_mw"]})
    summary: dict = {
        "samples": len(samples),
        "mean_power_mw": {rail: _mean([s["rails_mw"][rail] for s in samples if rail in s["rails_mw"]])
                          for rail in rails},  # fmt: skip
    }
    ram = [s["ram_used_mb"] for s in samples if "ram_used_mb" in s]
    if ram:
        summary.update(ram_used_mb_mean=_mean(ram), ram_used_mb_max=max(ram), ram_total_mb=samples[-1]["ram_total_mb"])
    load = [s["gpu_load_percent"] for s in samples if "gpu_load_percent" in s]
    if load:
        summary["gpu_load_percent_mean"] = _mean(load)
    return summary


def energy_per_image_mj(mean_power_mw: float, throughput_ips: float) -> float:
    """Energy per image in mJ: mean power (mW = mJ/s) over images per second."""
    return mean_power_mw / throughput_ips


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 1)


def attach_power(record: dict, batch_size: int, lines: list[str], source: str) -> dict:
    """Add the power of the tegrastats window `lines` to the bench record's latency entry at `batch_size`.

    The window is a dedicated run at that batch size (the device script keeps the engine busy while
    tegrastats samples); energy per image divides the board's mean input power by the entry's throughput.
    """
    from engines.errors import UserError

    entries = [e for e in record.get("latency", []) if e.get("batch_size") == batch_size]
    if not entries:
        have = sorted(e.get("batch_size") for e in record.get("latency", []))
        raise UserError(f"the bench record has no batch {batch_size} (it has {have}); pass one of those --batch-size")
    summary = power_summary(lines)
    if not summary:
        raise UserError(f"{source}: no tegrastats sample with power rails (VDD_*/POM_*); run tegrastats as root "
                        "on the Jetson while the engine runs")  # fmt: skip
    board = summary["mean_power_mw"].get(BOARD_RAIL)
    if board is not None and entries[0].get("throughput_ips"):
        summary["energy_per_image_mj"] = round(energy_per_image_mj(board, entries[0]["throughput_ips"]), 4)
    entries[0]["power"] = summary
    return record
