"""Where the demo (and `report`) put each artifact inside a run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NORMS_COMPARED = ("mimic", "bn")
NORM_LABELS = {"mimic": "MimicNorm", "bn": "BN-folded"}
# Engine variants per model: FP32 and INT8 with per-tensor or per-channel weight scales.
VARIANTS = ("fp32", "int8-per-tensor", "int8-per-channel")
SIMULATED_SUFFIX = "-simulated"
# What travels to a TensorRT target: a symmetric per-channel Q/DQ model (TensorRT 11, or 10 with
# Q/DQ) and a calibration cache from the same ranges (TensorRT 10's implicit INT8).
TENSORRT_VARIANT = "int8-tensorrt"


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

    def tensorrt_cache(self, norm: str) -> Path:
        return self.model_dir(norm) / "model.trt10.calib"

    def engine(self, norm: str, variant: str) -> Path:
        return self.model_dir(norm) / "engines" / variant

    def bench(self, norm: str, variant: str) -> Path:
        return self.model_dir(norm) / "bench" / f"{variant}.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"
