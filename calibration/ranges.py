"""Per-tensor activation ranges (amax) of an FP32 ONNX model on calibration images.

Collection runs on onnxruntime.quantization's calibrators, in up to two passes:
1. Its MinMaxCalibrater (symmetric) gives max |x| of every float tensor: the MinMax amax, and the
   upper edge of each tensor's histogram. Batch-size independent (tested).
2. For percentile, mse and entropy, the graph its HistogramCalibrater augments (every calibrated
   tensor made a graph output) runs batch by batch, and |x| is counted into 2048 fixed bins over
   [0, max |x|]. Its own HistogramCollector is not used: it stacks every batch of the set in one
   array (all activations in memory at once; a smaller last batch makes it fail), sizes its bins
   from the first batch, and its "entropy" returns MinMax ranges (docs/BACKGROUND.md section 3; tested).
`thresholds` then picks each tensor's amax from its histogram.

Input pixels are never clipped. The image input and the tensors an input normalization computes
from it by elementwise arithmetic with constants (`pixel_tensors`) keep their MinMax range under
every method: their range is fixed by the pixel format, so there is no outlier to trim, only image
content. Measured on Fashion-MNIST ResNet-20 (docs/BENCHMARKS.md): 62 % of the pixels are black
background, and EntropyCalibration2 put the normalized input's amax just above that spike, clipping
every pixel brighter than 44 % gray and costing 6-11 points of accuracy. TensorRT's own calibrator
would do the same to its network input; the ranges written here (Q/DQ and TensorRT 10 cache alike)
spare it. `clip_input=True` gives the plain algorithm on every tensor, for comparison.

Tensor names are those of the FP32 ONNX graph (its input and node outputs), which is also how
TensorRT's ONNX parser names the network's tensors.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCalibrater, create_calibrator

from calibration.data import ArrayCalibrationReader, ProgressCallback
from calibration.inputs import calibration_batch_images, image_input, load_fp32_model
from calibration.qdq import constant_tensors
from calibration.thresholds import NUM_BINS, AbsHistogram, abs_histogram, entropy_amax, mse_amax, percentile_amax
from engines.artifacts import read_json, sha256_file, write_json
from engines.errors import UserError
from engines.schemas import ACTIVATION_RANGES

METHODS = ("minmax", "percentile", "mse", "entropy")
DEFAULT_PERCENTILE = 99.99
# Elementwise ops through which the image input stays "pixels" when the other operand is a constant.
PIXEL_PRESERVING_OPS = ("Mul", "Add", "Sub", "Div")


@dataclass
class ActivationRanges:
    """What calibration measured, keyed by FP32 ONNX tensor name; saved as JSON next to the models."""

    method: str  # one of METHODS
    percentile: float | None  # for method "percentile", else None
    amax: dict[str, float]  # calibrated range: INT8 scale = amax / 127 (Q/DQ and TensorRT cache alike)
    max_abs: dict[str, float]  # largest |x| seen (the MinMax amax): what an FP16 overflow check needs
    model_sha256: str  # of the FP32 ONNX file calibrated
    calibration_sha256: str  # of the calibration images (see images_sha256)
    num_images: int
    batch_size: int
    # Smallest and largest value seen: asymmetric (uint8) activations, as ONNX Runtime prefers on
    # x86, need the sign-aware range, not just amax.
    minimum: dict[str, float] = field(default_factory=dict)
    maximum: dict[str, float] = field(default_factory=dict)
    # Pixel tensors kept at their MinMax range although the method clips (see the module docstring).
    unclipped_inputs: list[str] = field(default_factory=list)

    def asymmetric_range(self, name: str) -> tuple[float, float]:
        """(low, high) for uint8 activations: the observed range, clipped at +-amax like the
        symmetric one, so a clipping method (percentile, entropy) clips here too."""
        amax = self.amax[name]
        return max(self.minimum[name], -amax), min(self.maximum[name], amax)

    def require_model(self, model_path: str | os.PathLike) -> None:
        """Raise UserError unless these ranges were measured on the model at `model_path`."""
        if sha256_file(model_path) != self.model_sha256:
            raise UserError(
                f"{model_path}: activation ranges were calibrated on another model (sha256 "
                f"{self.model_sha256[:12]}...); re-run calibration on this model"
            )

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, *ACTIVATION_RANGES, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationRanges:
        document = read_json(path, *ACTIVATION_RANGES)
        return cls(**{name: document[name] for name in cls.__dataclass_fields__})


def images_sha256(images: np.ndarray) -> str:
    """sha256 of a float32 image array: dtype, shape and bytes, so the same pixels give the same hash."""
    array = np.ascontiguousarray(images, dtype=np.float32)
    digest = hashlib.sha256(f"float32{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def calibrate_ranges(
    model_path: str | os.PathLike,
    images: np.ndarray,
    method: str = "minmax",
    *,
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = 32,
    clip_input: bool = False,
    progress: ProgressCallback | None = None,
) -> ActivationRanges:
    """Run `model_path` (FP32 ONNX) on `images` (float32 N x C x H x W) and pick every tensor's amax.

    Pixel tensors keep their MinMax amax unless `clip_input` (see the module docstring).
    `progress(done, total)` counts batches over both passes. Bad input raises UserError.
    """
    check_method(method, percentile, batch_size)
    path = Path(model_path)
    model = load_fp32_model(path)
    input_name, dims = image_input(model, path)
    images = calibration_batch_images(images, input_name, dims, batch_size, path)
    passes = 1 if method == "minmax" else 2
    num_batches = -(-len(images) // batch_size)

    def pass_progress(index: int) -> ProgressCallback | None:
        if progress is None:
            return None
        return lambda done, total: progress(index * num_batches + done, passes * num_batches)

    with tempfile.TemporaryDirectory(prefix="mimicnorm-calibration.") as tmp:
        # ORT's calibrators take a path and write files next to it: give them a private copy.
        model_copy = Path(tmp) / "model.onnx"
        onnx.save(model, model_copy)
        reader = ArrayCalibrationReader(images, input_name, batch_size, pass_progress(0))
        minimum, maximum = _min_max(model_copy, reader)
        max_abs = {name: max(-minimum[name], maximum[name]) for name in minimum}
        if method == "minmax":
            amax = dict(max_abs)
        else:
            reader = ArrayCalibrationReader(images, input_name, batch_size, pass_progress(1))
            histograms = _abs_histograms(model_copy, reader, max_abs)
            amax = {name: _pick_amax(method, histogram, percentile) for name, histogram in histograms.items()}
    unclipped = [] if clip_input or method == "minmax" else [name for name in pixel_tensors(model) if name in amax]
    for name in unclipped:
        amax[name] = max_abs[name]
    # In graph order (input, then node outputs), so that files written from the ranges read like the graph.
    order = [i.name for i in model.graph.input] + [name for node in model.graph.node for name in node.output]
    return ActivationRanges(
        method=method,
        percentile=percentile if method == "percentile" else None,
        amax={name: amax[name] for name in order if name in amax},
        max_abs={name: max_abs[name] for name in order if name in max_abs},
        model_sha256=sha256_file(path),
        calibration_sha256=images_sha256(images),
        num_images=len(images),
        batch_size=batch_size,
        minimum={name: minimum[name] for name in order if name in minimum},
        maximum={name: maximum[name] for name in order if name in maximum},
        unclipped_inputs=unclipped,
    )


def pixel_tensors(model: onnx.ModelProto) -> list[str]:
    """The graph inputs and every tensor computed from them only by Mul/Add/Sub/Div with constants
    (an input normalization), in graph order."""
    constants = set(constant_tensors(model))
    pixels = [i.name for i in model.graph.input if i.name not in constants]
    for node in model.graph.node:
        if node.op_type not in PIXEL_PRESERVING_OPS or len(node.input) != 2:
            continue
        operands = set(node.input)
        if operands & set(pixels) and operands - set(pixels) <= constants:
            pixels.append(node.output[0])
    return pixels


def check_method(method: str, percentile: float, batch_size: int) -> None:
    if method not in METHODS:
        raise UserError(f"calibration method {method!r} is not available; use one of: {', '.join(METHODS)}")
    if method == "percentile" and not 0 < percentile <= 100:
        raise UserError(f"percentile {percentile} is outside (0, 100]; pass e.g. 99.99")
    if batch_size < 1:
        raise UserError(f"calibration batch size {batch_size} is not positive; pass a batch size of 1 or more")


def _min_max(model_path: Path, reader: ArrayCalibrationReader) -> tuple[dict[str, float], dict[str, float]]:
    calibrator = create_calibrator(
        model_path,
        augmented_model_path=str(model_path.with_name("minmax.onnx")),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"symmetric": False},
    )
    calibrator.collect_data(reader)
    data = calibrator.compute_data()
    minimum = {name: float(np.min(d.range_value[0])) for name, d in data.items()}
    maximum = {name: float(np.max(d.range_value[1])) for name, d in data.items()}
    for name in minimum:
        if not (math.isfinite(minimum[name]) and math.isfinite(maximum[name])):
            raise UserError(
                f"tensor {name!r} reaches {minimum[name]}..{maximum[name]} on the calibration images: the FP32 "
                "model overflows; check the exported model on these images"
            )
    return minimum, maximum


def _abs_histograms(
    model_path: Path, reader: ArrayCalibrationReader, max_abs: dict[str, float]
) -> dict[str, AbsHistogram]:
    calibrator = HistogramCalibrater(model_path, augmented_model_path=str(model_path.with_name("histogram.onnx")))
    calibrator.augment_graph()
    calibrator.create_inference_session()
    names = sorted(calibrator.tensors_to_calibrate)
    counts = {name: np.zeros(NUM_BINS, np.int64) for name in names}
    while (feed := reader.get_next()) is not None:
        for name, values in zip(names, calibrator.infer_session.run(names, feed), strict=True):
            counts[name] += abs_histogram(values, max_abs[name])
    return {name: AbsHistogram(counts[name], max_abs[name]) for name in names}


def _pick_amax(method: str, histogram: AbsHistogram, percentile: float) -> float:
    if method == "percentile":
        return percentile_amax(histogram, percentile)
    if method == "mse":
        return mse_amax(histogram)
    return entropy_amax(histogram)
