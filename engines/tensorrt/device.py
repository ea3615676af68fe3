"""Which device and TensorRT an engine is built for: a TensorRT engine runs only on the GPU model
(compute capability) and TensorRT version it was built with, unless built version- or
hardware-compatible (docs/TENSORRT.md section 5)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from engines.errors import UserError
from engines.tensorrt.cuda import CudaApi

# JetPack writes its L4T release here (NVIDIA Jetson Linux Developer Guide).
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
_L4T = re.compile(r"# R(\d+) \(release\), REVISION: ([\d.]+)")


def l4t_release(path: Path = NV_TEGRA_RELEASE) -> str | None:
    """'36.4.3' on a Jetson with JetPack 6.2 (from '# R36 (release), REVISION: 4.3, ...'), else None."""
    try:
        match = _L4T.search(path.read_text(errors="replace"))
    except OSError:
        return None
    return f"{match.group(1)}.{match.group(2)}" if match else None


def gpu_device(cuda: CudaApi, tensorrt_version: str) -> dict[str, Any]:
    """The device fingerprint an engine is bound to (recorded at build, compared at load)."""
    major, minor = cuda.compute_capability()
    return {
        "name": cuda.device_name(),
        "compute_capability": f"{major}.{minor}",
        "tensorrt_version": tensorrt_version,
        "l4t_release": l4t_release(),
        "cuda_binding": cuda.name,
    }


def fingerprint(device: dict[str, Any]) -> str:
    """What an engine is bound to (the manifest's device_fingerprint): GPU model, compute
    capability, TensorRT version. engines/tensorrt/device.runs_here applies the compatibility
    builds' looser rules."""
    return describe(device)


def timing_cache_path(device: dict[str, Any], directory: str | os.PathLike | None = None) -> Path:
    """One timing cache per GPU model and TensorRT version: tactic timings do not carry across either."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", device["name"]).strip("-").lower()
    name = f"{slug}-sm{device['compute_capability']}-trt{device['tensorrt_version']}.timing-cache"
    if directory is None:
        directory = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mimicnorm-deploy" / "tensorrt"
    return Path(directory) / name


def describe(device: dict[str, Any]) -> str:
    return f"{device.get('name')} (compute capability {device.get('compute_capability')}) with TensorRT " \
           f"{device.get('tensorrt_version')}"  # fmt: skip


def _compute_capability(device: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(part) for part in str(device.get("compute_capability", "0.0")).split("."))


def runs_here(built: dict[str, Any], here: dict[str, Any], version_compatible: bool, hardware_compatibility: str
              ) -> bool:  # fmt: skip
    """Whether an engine built on `built` loads on `here`, as TensorRT's portability rules allow."""
    from engines.tensorrt.api import version_tuple

    built_version, here_version = version_tuple(built["tensorrt_version"]), version_tuple(here["tensorrt_version"])
    if version_compatible:  # later versions of the same major only
        version_ok = built_version[0] == here_version[0] and here_version >= built_version
    else:
        version_ok = built["tensorrt_version"] == here["tensorrt_version"]
    if hardware_compatibility == "ampere-plus":
        hardware_ok = _compute_capability(here) >= (8, 0)
    elif hardware_compatibility == "same-compute-capability":
        hardware_ok = _compute_capability(here) == _compute_capability(built)
    else:
        hardware_ok = built["name"] == here["name"] and built["compute_capability"] == here["compute_capability"]
    return version_ok and hardware_ok


def check_runs_here(engine_dir: str | os.PathLike, built: dict[str, Any], here: dict[str, Any],
                    build_flags: dict[str, Any]) -> None:  # fmt: skip
    """Refuse, in one line, an engine built for another GPU, compute capability or TensorRT version."""
    if not runs_here(built, here, bool(build_flags.get("version_compatible")),
                     str(build_flags.get("hardware_compatibility", "none"))):  # fmt: skip
        raise UserError(
            f"{engine_dir}: engine built for {describe(built)}, this device is {describe(here)}: "
            "rebuild on this device with 'mimicnorm-deploy build --backend tensorrt'"
        )
