"""INT8 encodings of the targets: how the arithmetic of the hardware that will run a model decides how it is written.

One precision plan is written once per target: the layers it puts in INT8 are the same, the
encoding of those layers follows the target's kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.cpu import CpuFeatures, cpu_features, needs_reduce_range
from engines.errors import UserError
from engines.targets import get_target


@dataclass(frozen=True)
class TargetEncoding:
    target: str
    activations: str  # calibration.quantize.ACTIVATION_ENCODINGS
    reduce_range: bool  # 7-bit weights
    placement: str  # calibration.quantize.PLACEMENTS
    high_precision: str  # where a plan moves sensitive layers: fp16 on GPUs, fp32 on CPUs

    @property
    def qdq_options(self) -> dict:
        """The keyword arguments of write_qdq_model (and plan_precision) for this encoding."""
        return {"reduce_range": self.reduce_range, "activations": self.activations, "placement": self.placement}


def encoding_for(target: str, features: CpuFeatures | None = None) -> TargetEncoding:
    """The INT8 encoding for `target` (a name in engines.targets.TARGETS); `features` describes the
    CPU a `cpu` target's model will run on
    (default: this machine's, since ONNX Runtime models are calibrated where they run).

    TensorRT: symmetric int8 everywhere (its requirement), full 8-bit weights, Q/DQ where TensorRT
    fuses them, FP16 for the layers a plan keeps out of INT8. ONNX Runtime on a CPU: on x86 uint8
    activations (its native U8S8 kernels; symmetric int8 made INT8 2x slower than FP32 on this
    project's AVX2 machines), 7-bit weights where its kernels would saturate with 8 (no VNNI,
    docs/BACKGROUND.md section 3), ONNX Runtime's own Q/DQ placement (its kernels fuse DQ -> op -> Q),
    FP32 for the layers a plan keeps out of INT8.
    """
    spec = get_target(target)
    if spec.int8_encoding is None:
        raise UserError(f"target {target!r} runs no INT8 ({spec.description}); calibrate for cpu or a TensorRT target")
    if spec.int8_encoding == "tensorrt":
        return TargetEncoding(target, "int8-symmetric", False, "tensorrt", spec.high_precision)
    features = features or cpu_features()
    activations = "uint8" if features.is_x86 else "int8-symmetric"
    return TargetEncoding(target, activations, needs_reduce_range(features), "onnxruntime", spec.high_precision)
