"""Which device a torch engine runs on, what identifies it, and how much device memory this process
holds on it as the driver sees it (what nvidia-smi shows: the measure the MimicNorm paper reports).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import torch

from engines.cpu import cpu_device, cpu_fingerprint
from engines.errors import UserError

NVIDIA_SMI_TIMEOUT_S = 10
NOT_MEASURED = "not measured"


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` as a torch.device that exists here; a one-line error otherwise."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported by the torch backend; use cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked but PyTorch sees no CUDA device here; use --device cpu")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} asked but there are only {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


def device_entry(device: torch.device) -> dict:
    """The manifest's `device` entry: for a CPU the INT8-relevant features (as every CPU engine),
    for a GPU its name (what an engine must match), compute capability and memory."""
    if device.type == "cpu":
        return cpu_device()
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "type": "cuda",
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_bytes": int(props.total_memory),
        "multiprocessors": int(props.multi_processor_count),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def fingerprint(device: dict) -> str:
    """What an engine is bound to: a CPU's INT8-relevant features as for every CPU engine (eager
    kernels do not depend on the exact model); a GPU's name and compute capability."""
    if device.get("type") != "cuda":
        return cpu_fingerprint(device)
    return f"{device['name']} (compute capability {device['compute_capability']})"


# --- Process device memory as the driver reports it ---------------------------------------------


def process_device_memory(pid: int | None = None) -> tuple[int | None, str]:
    """Device memory held by process `pid` (this one by default) summed over all GPUs, and how it
    was read: ("nvml", via the nvidia-ml-py package), ("nvidia-smi", its CSV query) or
    (None, "not measured") where neither can see the process (no driver tools, or a container
    whose PID namespace differs from the driver's)."""
    pid = os.getpid() if pid is None else pid
    used = _nvml_process_bytes(pid)
    if used is not None:
        return used, "nvml"
    used = _nvidia_smi_process_bytes(pid)
    if used is not None:
        return used, "nvidia-smi"
    return None, NOT_MEASURED


def _nvml_process_bytes(pid: int) -> int | None:
    try:
        import pynvml  # nvidia-ml-py: optional, absent on most CPU machines
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        processes = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            processes += pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return sum_process_memory([(p.pid, p.usedGpuMemory) for p in processes], pid)
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def _nvidia_smi_process_bytes(pid: int) -> int | None:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    query = [executable, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        completed = subprocess.run(query, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    return sum_process_memory(parse_nvidia_smi_apps(completed.stdout), pid)


def parse_nvidia_smi_apps(text: str) -> list[tuple[int, int | None]]:
    """(pid, bytes) per line of `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`
    (memory in MiB; "[N/A]" where the driver cannot attribute it, e.g. under MIG or WSL)."""
    rows = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit():
            continue
        rows.append((int(fields[0]), int(fields[1]) * 2**20 if fields[1].isdigit() else None))
    return rows


def sum_process_memory(rows: list[tuple[int, int | None]], pid: int) -> int | None:
    """Total bytes of `pid` over its rows (one per GPU it uses); None when it has no row or the
    driver could not attribute its memory."""
    mine = [used for row_pid, used in rows if row_pid == pid]
    if not mine or any(used is None for used in mine):
        return None
    return int(sum(mine))
