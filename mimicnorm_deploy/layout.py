"""Where the demo (and `report`) put each artifact inside a run directory.

A *variant* is one artifact of a run (docs/ARCHITECTURE.md, "Vocabulary"). Its name is its recipe
(`fp32`, `fp16`, `int8-per-tensor`, `int8-per-channel`) and, when calibration wrote it for a
target (engines/targets.py), `.<target>` after it: `int8-per-channel.cpu` runs on this machine's
CPU, `int8-per-channel.desktop-gpu` is for TensorRT on a desktop GPU. File names follow:
`model.<variant>.onnx`, `engines/<variant>/`, `bench/<variant>.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engines.targets import DEFAULT_TARGET

NORMS_COMPARED = ("mimic", "bn")
NORM_LABELS = {"mimic": "MimicNorm", "bn": "BN-folded"}


def variant_name(recipe: str, target: str | None = None) -> str:
    """`recipe`, or `recipe.target` for an artifact calibrated for `target`."""
    return recipe if target is None else f"{recipe}.{target}"


# The INT8 recipes the demo calibrates for this machine's CPU, builds and benchmarks.
CPU_RECIPES = ("int8-per-tensor", "int8-per-channel")
# Engine variants per model: FP32, and INT8 with per-tensor or per-channel weight scales for the CPU.
VARIANTS = ("fp32", *(variant_name(recipe, DEFAULT_TARGET) for recipe in CPU_RECIPES))
# An engine that runs a variant's Q/DQ as float ops (INT8 simulated): `<variant>.simulated`.
SIMULATED_SUFFIX = ".simulated"
# What travels to a TensorRT target: a symmetric per-channel Q/DQ model (TensorRT 11, or 10 with
# Q/DQ) and a calibration cache from the same ranges (TensorRT 10's implicit INT8), for the
# desktop-gpu target (a Jetson target's TensorRT 10 cache differs only in its version header).
TENSORRT_TARGET = "desktop-gpu"
TENSORRT_VARIANT = variant_name("int8-per-channel", TENSORRT_TARGET)
FP16_VARIANT = "fp16"  # pure FP16: no target shaped it
# The gated mixed-precision plan for TensorRT from per-tensor MinMax INT8: the layers whose INT8
# costs more than the gate allows move to FP16 (how a BN-folded depthwise network is rescued).
PLAN_VARIANT = variant_name("int8-per-tensor-gated", TENSORRT_TARGET)
# The gate: top-1 drop on held-out calibration images, as a fraction (one point needs 300 of them,
# engines.precision_plan.holdout_needed).
PLAN_MAX_TOP1_DROP = 0.01
# The BN twin's per-tensor INT8 for this CPU after cross-layer equalization (calibration.equalize):
# what a user with a BN network would try before retraining.
EQUALIZED_VARIANT = variant_name("int8-per-tensor-equalized", DEFAULT_TARGET)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def calibration_set(self) -> Path:
        return self.data_dir / "calib.npz"

    @property
    def test_set(self) -> Path:
        return self.data_dir / "test.npz"

    def model_dir(self, norm: str) -> Path:
        return self.root / norm

    def checkpoint(self, norm: str) -> Path:
        return self.model_dir(norm) / "checkpoint.safetensors"

    def train_report(self, norm: str) -> Path:
        return self.model_dir(norm) / "train_report.json"

    def frozen(self, norm: str) -> Path:
        return self.model_dir(norm) / "frozen.safetensors"

    def onnx(self, norm: str, variant: str = "fp32") -> Path:
        suffix = "" if variant == "fp32" else f".{variant}"
        return self.model_dir(norm) / f"model{suffix}.onnx"

    def calibration_record(self, norm: str, variant: str) -> Path:
        return self.onnx(norm, variant).with_suffix(".json")

    def fp16_refusals(self, norm: str) -> Path:
        """Which FP16 products the demo could not write for this model, and why (FP16 overflow)."""
        return self.model_dir(norm) / "fp16_refusals.json"

    def tensorrt_cache(self, norm: str, variant: str = TENSORRT_VARIANT) -> Path:
        """TensorRT 10's calibration cache from the same ranges as `variant`'s Q/DQ model."""
        return self.onnx(norm, variant).with_suffix(".trt10.calib")

    def engine(self, norm: str, variant: str) -> Path:
        return self.model_dir(norm) / "engines" / variant

    def bench(self, norm: str, variant: str) -> Path:
        return self.model_dir(norm) / "bench" / f"{variant}.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"
