"""The TensorRT backend's build options and the choice of build path: pure functions of the
options, the TensorRT major version and what the given files hold (docs/TENSORRT.md section 2).

Build paths:
- `strongly-typed` (TensorRT 11, and 10 for `--precision as-typed`): every tensor keeps the type
  the ONNX file gives it; INT8 comes from the file's Q/DQ nodes, FP16 from its FP16 tensors.
- `calibration-cache` (TensorRT 10 only): the FP32 file, INT8 + FP16 builder flags, our cache read
  by a calibrator that never asks for images, the plan's high-precision layers pinned.
- `weakly-typed` (TensorRT 10 only): the FP32 file with the FP16 flag (`fp16`) or none (`fp32`).

Imports neither TensorRT nor a CUDA binding: the CLI reads FLAGS (the `build` flags) wherever it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.arguments import Flag, non_negative_int, positive_int
from engines.errors import UserError
from engines.targets import Target, get_target

PRECISIONS = ("as-typed", "fp32", "fp16", "int8")
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere-plus": "AMPERE_PLUS", "same-compute-capability":
                          "SAME_COMPUTE_CAPABILITY"}  # fmt: skip


@dataclass
class Options:
    """How to build a TensorRT engine. Every field has a default; the CLI sets them by name."""

    target: str = "desktop-gpu"  # engines/targets.py: workspace cap, optimization level, DLA core
    precision: str = "as-typed"  # one of PRECISIONS; "int8" needs calibration_cache
    calibration_cache: str | None = None  # TensorRT 10 cache written by calibrate (+ its .json sidecar)
    plan: str | None = None  # precision plan JSON written by calibrate (its FP16/FP32 layers are pinned)
    min_batch: int = 1  # optimization profile of a dynamic batch dimension
    opt_batch: int | None = None  # None: max_batch
    max_batch: int = 32
    timing_cache_dir: str | None = None  # None: ~/.cache/mimicnorm-deploy/tensorrt
    version_compatible: bool = False  # engine runs on later TensorRT versions of the same major
    hardware_compatibility: str = "none"  # one of HARDWARE_COMPATIBILITY
    cuda_graph: bool = False  # the runner replays inference as a CUDA graph
    workspace_mib: int | None = None  # None: the target's cap
    builder_optimization_level: int | None = None  # None: the target's (else TensorRT's default, 3)

    @property
    def batch_profile(self) -> tuple[int, int, int]:
        return self.min_batch, self.opt_batch if self.opt_batch is not None else self.max_batch, self.max_batch



FLAGS = (
    Flag("--precision", "precision", "as-typed (default: the file's types, strongly typed), or fp16/fp32/int8 as "
         "TensorRT 10 builder flags", choices=PRECISIONS),  # fmt: skip
    Flag("--target", "target", "engines/targets.py: desktop-gpu (default), jetson-orin-agx|nx|nano[-dla0|1]"),
    Flag("--calibration-cache", "calibration_cache", "TensorRT 10: the FP32 model's calibration cache from calibrate"),
    Flag("--plan", "plan", "precision plan JSON from calibrate (its FP16/FP32 layers are pinned)"),
    *(Flag(f"--{bound}-batch", f"{bound}_batch", f"optimization profile: {bound} batch size", type=positive_int)
      for bound in ("min", "opt", "max")),  # fmt: skip
    Flag("--timing-cache-dir", "timing_cache_dir", "default ~/.cache/mimicnorm-deploy/tensorrt"),
    Flag("--workspace-mib", "workspace_mib", "builder workspace cap (default: the target's)", type=positive_int),
    Flag("--optimization-level", "builder_optimization_level", "0-5", type=non_negative_int),
    Flag("--version-compatible", "version_compatible", "runs on later TensorRT of the same major", const=True),
    Flag("--hardware-compatibility", "hardware_compatibility", choices=tuple(HARDWARE_COMPATIBILITY)),
    Flag("--cuda-graph", "cuda_graph", "the runner replays inference as a CUDA graph", const=True),
)

def check_options(options: Options) -> Target:
    """Raise a one-line UserError for options that cannot make sense together; return the target."""
    target = get_target(options.target)
    if target.backend != "tensorrt":
        raise UserError(f"target {target.name!r} runs on {target.backend}, not TensorRT; pick a GPU or Jetson target")
    if options.precision not in PRECISIONS:
        raise UserError(f"precision {options.precision!r} is not one of {', '.join(PRECISIONS)}")
    if options.precision == "int8" and options.calibration_cache is None:
        raise UserError(
            "INT8 comes from a Q/DQ model (build it with --precision as-typed) or from a calibration cache "
            "(--calibration-cache, TensorRT 10); give one"
        )
    if options.calibration_cache is not None and options.precision not in ("int8", "as-typed"):
        raise UserError(f"a calibration cache builds INT8; drop --precision {options.precision} or the cache")
    low, opt, high = options.batch_profile
    if not 1 <= low <= opt <= high:
        raise UserError(f"batch profile min {low} / opt {opt} / max {high} must satisfy 1 <= min <= opt <= max")
    if options.hardware_compatibility not in HARDWARE_COMPATIBILITY:
        raise UserError(
            f"hardware compatibility {options.hardware_compatibility!r} is not one of "
            f"{', '.join(HARDWARE_COMPATIBILITY)}"
        )
    if options.workspace_mib is not None and options.workspace_mib < 1:
        raise UserError(f"workspace {options.workspace_mib} MiB must be >= 1")
    level = options.builder_optimization_level
    if level is not None and not 0 <= level <= 5:
        raise UserError(f"builder optimization level {level} is not in TensorRT's 0-5")
    return target


@dataclass(frozen=True)
class BuildPath:
    name: str  # "strongly-typed", "calibration-cache" or "weakly-typed"
    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag names for the precision
    precision: str | None  # what the manifest records ("fp32", "fp16", "int8", "plan"); None: the file's types


def choose_build_path(major: int, options: Options, qdq_model_hint: str | None = None) -> BuildPath:
    """The build path for TensorRT `major` and these options, or a one-line UserError saying what to
    pass instead. `qdq_model_hint` names the Q/DQ model calibrate wrote beside a calibration cache."""
    if options.calibration_cache is not None:
        if major >= 11:
            use = qdq_model_hint or "the Q/DQ model 'mimicnorm-deploy calibrate' wrote beside it"
            raise UserError(
                f"{options.calibration_cache}: TensorRT {major} has no calibration caches (strongly typed only); "
                f"build {use} with --precision as-typed instead"
            )
        return BuildPath("calibration-cache", False, ("INT8", "FP16"), "plan" if options.plan else "int8")
    if options.precision == "as-typed":
        return BuildPath("strongly-typed", True, (), "plan" if options.plan else None)
    if major >= 11:
        raise UserError(
            f"TensorRT {major} builds strongly typed networks only (no {options.precision.upper()} flag): pass the "
            f"{options.precision} model calibrate writes (e.g. --fp16 for FP16) with --precision as-typed"
        )
    return BuildPath("weakly-typed", False, ("FP16",) if options.precision == "fp16" else (), options.precision)
