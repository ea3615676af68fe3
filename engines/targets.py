"""Targets: where a model will run. One registry, read by calibration (how INT8 is written), by the
engine builders (workspace, DLA core, optimization level) and by the device tools (bundle, trtexec).

Vocabulary, one name per concept across code, CLI flags, file names and docs (docs/ARCHITECTURE.md):
- *target*: a device class + the runtime that runs on it + that runtime's arithmetic, e.g. `cpu`,
  `desktop-gpu`, `jetson-orin-nx`, `jetson-orin-agx-dla0`. A target names its backend and its
  INT8 encoding, and carries the platform's limits.
- *backend*: the runtime that builds and runs engines: `onnxruntime`, `tensorrt`, `torch`.
- *variant*: one artifact of a run (fp32, fp16, int8-per-tensor, ...): mimicnorm_deploy/layout.py.

Targets are data, not code: adding a device is one entry in TARGETS.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.errors import UserError

# How INT8 is written for a target's kernels (calibration.targets turns this into Q/DQ options).
INT8_ENCODINGS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # the runtime that builds and runs this target's engines
    device: str  # "cpu", "gpu" or "dla"
    int8_encoding: str | None  # one of INT8_ENCODINGS; None: the target runs no INT8 (the torch reference)
    high_precision: str  # the type a precision plan gives the layers it keeps out of INT8
    description: str
    # TensorRT versions the platform ships, oldest first; the first is the default a TensorRT 10
    # calibration cache is written for (its header names one version and TensorRT skips others).
    tensorrt_versions: tuple[str, ...] = ()
    workspace_mib: int | None = None  # builder workspace cap (Jetson builds run out of memory without one)
    builder_optimization_level: int | None = None  # TensorRT's 0-5; None: TensorRT's default (3)
    dla_core: int | None = None  # DLA core to build for, with GPU fallback for what DLA cannot run

    @property
    def default_tensorrt_version(self) -> str | None:
        return self.tensorrt_versions[0] if self.tensorrt_versions else None


# JetPack 6.x ships TensorRT 10.3 (Orin, SM 8.7); JetPack 7.x ships 10.13 and later; TensorRT 11
# supports JetPack 7.2.2+ only, with DLA on AGX Orin only (NVIDIA's TensorRT and JetPack release notes).
_JETPACK_TENSORRT = ("10.3.0", "10.13.0", "11.4.0")
_JETSONS = {
    # name: (workspace cap MiB, DLA cores, description)
    "jetson-orin-agx": (2048, 2, "Jetson AGX Orin (32/64 GB)"),
    "jetson-orin-nx": (1024, 2, "Jetson Orin NX (8/16 GB; the 8 GB module has one DLA core)"),
    "jetson-orin-nano": (512, 0, "Jetson Orin Nano (4/8 GB, no DLA)"),
}


def _jetson_targets() -> list[Target]:
    targets = []
    for name, (workspace_mib, dla_cores, description) in _JETSONS.items():
        common = dict(backend="tensorrt", int8_encoding="tensorrt", high_precision="fp16",
                      tensorrt_versions=_JETPACK_TENSORRT, workspace_mib=workspace_mib)  # fmt: skip
        targets.append(Target(name, device="gpu", description=f"{description}, GPU", **common))
        for core in range(dla_cores):
            dla_description = f"{description}, DLA core {core} with GPU fallback"
            targets.append(Target(f"{name}-dla{core}", device="dla", dla_core=core, description=dla_description,
                                  **common))  # fmt: skip
    return targets


TARGETS: dict[str, Target] = {
    target.name: target
    for target in [
        Target("cpu", backend="onnxruntime", device="cpu", int8_encoding="onnxruntime", high_precision="fp32",
               description="this machine's CPU with ONNX Runtime (x86 or ARM; the encoding follows its INT8 "
                           "instructions, so calibrate where the model will run)"),  # fmt: skip
        Target("desktop-gpu", backend="tensorrt", device="gpu", int8_encoding="tensorrt", high_precision="fp16",
               description="a desktop or datacenter NVIDIA GPU with TensorRT 10 or 11",
               tensorrt_versions=("10.13.0", "11.4.0")),  # fmt: skip
        *_jetson_targets(),
        # PyTorch itself: the baseline a deployed engine is measured against, not a deployment target.
        Target("torch-cpu", backend="torch", device="cpu", int8_encoding=None, high_precision="fp32",
               description="PyTorch on this CPU (eager or torch.compile; FP32 or BF16; no INT8)"),  # fmt: skip
        Target("torch-cuda", backend="torch", device="gpu", int8_encoding=None, high_precision="fp16",
               description="PyTorch on an NVIDIA GPU (eager, torch.compile or CUDA graphs; FP32, FP16 or BF16; "
                           "no INT8)"),  # fmt: skip
    ]
}
DEFAULT_TARGET = "cpu"


def get_target(name: str) -> Target:
    """The target called `name`, or a one-line error listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}") from None


def parse_tensorrt_version(text: str) -> tuple[int, int, int]:
    """'10.3' or '10.3.0' -> (10, 3, 0); a one-line error for anything else."""
    parts = text.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        raise UserError(f"TensorRT version {text!r} is not MAJOR.MINOR[.PATCH]; e.g. 10.3 (JetPack 6) or 10.13")
    major, minor, patch = (int(part) for part in (*parts, "0", "0")[:3])
    return major, minor, patch
