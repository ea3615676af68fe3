"""Where a benchmark ran: the facts that move latency figures, recorded beside them.

A latency is only comparable with another taken on the same CPU (model, flags, cores the process
may use), under similar load, with the same libraries, and on a GPU or Jetson at the same clocks
and power mode. `environment_fingerprint()` collects what this machine exposes without root;
`finish_fingerprint()` adds the load average after the run, so a reader sees whether other work
competed with the benchmark. Everything missing on a platform is left out, never guessed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

from engines.artifacts import library_versions, now_utc
from engines.cpu import cpu_features
from engines.jetson import TEGRA_RELEASE, cuda_version, device_root, parse_jetson_clocks, run_tool, sysfs_clocks

# Environment variables that change how many threads the math libraries use.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
NVIDIA_SMI_FIELDS = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "pstate", "power.limit")
CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")
COMMAND_TIMEOUT_S = 10


def environment_fingerprint() -> dict:
    """The machine, its load and its libraries, taken just before a benchmark."""
    features = cpu_features()
    fingerprint: dict = {
        "taken": now_utc(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": {
            **features.to_dict(),
            "logical_cores": os.cpu_count(),
            "affinity": _affinity(),
            **_cpufreq(),
        },
        "load_average_before": _load_average(),
        "threads_env": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        "versions": library_versions(),
    }
    gpus = nvidia_gpus()
    if gpus:
        fingerprint["gpus"] = gpus
    jetson = jetson_info()
    if jetson:
        fingerprint["jetson"] = jetson
    return fingerprint


def finish_fingerprint(fingerprint: dict) -> dict:
    """The fingerprint with the load average after the benchmark added."""
    return {**fingerprint, "load_average_after": _load_average()}


def _load_average() -> list[float] | None:
    # 1-, 5- and 15-minute averages of runnable processes; None where the OS has none (Windows).
    with contextlib.suppress(OSError, AttributeError):
        return [round(value, 2) for value in os.getloadavg()]
    return None


def _affinity() -> list[int] | None:
    # The cores this process may run on: a container or taskset can hide most of os.cpu_count().
    with contextlib.suppress(AttributeError, OSError):
        return sorted(os.sched_getaffinity(0))
    return None


def _cpufreq() -> dict:
    values = {}
    for name in ("scaling_governor", "scaling_cur_freq", "scaling_max_freq"):
        with contextlib.suppress(OSError):
            values[name] = (CPUFREQ / name).read_text().strip()
    return values


def parse_nvidia_smi(csv_text: str) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=<NVIDIA_SMI_FIELDS> --format=csv,noheader` as dicts."""
    rows = []
    for line in csv_text.strip().splitlines():
        values = [value.strip() for value in line.split(",")]
        if len(values) == len(NVIDIA_SMI_FIELDS):
            rows.append(dict(zip(NVIDIA_SMI_FIELDS, values, strict=True)))
    return rows


def nvidia_gpus() -> list[dict]:
    """Desktop NVIDIA GPUs with driver and clocks, from nvidia-smi; empty where there is none."""
    text = _run(["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader"])
    return parse_nvidia_smi(text) if text else []


def parse_tegra_release(text: str) -> str | None:
    """The L4T version from /etc/nv_tegra_release ("# R36 (release), REVISION: 3.0, ..." -> "36.3.0")."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    fields = dict(part.strip().split(": ", 1) for part in first.lstrip("# ").split(",") if ": " in part)
    release = first.lstrip("# ").split(" ", 1)[0]
    if not release.startswith("R") or "REVISION" not in fields:
        return None
    return f"{release[1:]}.{fields['REVISION']}"


def parse_nvpmodel(text: str) -> str | None:
    """The power mode from `nvpmodel -q` ("NV Power Mode: MAXN\\n0" -> "MAXN")."""
    for line in text.splitlines():
        if line.startswith("NV Power Mode:"):
            return line.split(":", 1)[1].strip()
    return None


def jetson_info() -> dict:
    """L4T release, CUDA version, power mode and GPU/EMC clocks (locked or not) on a Jetson; empty elsewhere.

    Read under MIMICNORM_DEVICE_ROOT with the tools NVPMODEL and JETSON_CLOCKS name (engines.jetson), so the
    device script and tests can point them elsewhere. `jetson_clocks --show` needs root: the device script
    passes JETSON_CLOCKS="sudo -n jetson_clocks"; without it the clock lock state is left out.
    """
    root = device_root()
    release = root / TEGRA_RELEASE
    if not release.is_file():
        return {}
    info: dict = {"l4t": parse_tegra_release(release.read_text(errors="replace"))}
    cuda = cuda_version(root)
    if cuda is not None:
        info["cuda"] = cuda
    mode = parse_nvpmodel(run_tool("NVPMODEL", "nvpmodel", "-q"))
    if mode is not None:
        info["power_mode"] = mode
    info.update(parse_jetson_clocks(run_tool("JETSON_CLOCKS", "jetson_clocks", "--show")))
    info.update(sysfs_clocks(root))
    return info


def _run(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        if completed.returncode == 0:
            return completed.stdout
    return ""
