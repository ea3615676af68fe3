"""Checks on what calibration is given: an FP32 ONNX CNN with one image input, and float32 images that fit it.

Each check raises UserError naming the problem and the fix, before anything is run or written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from calibration.qdq import WEIGHTED_OPS
from engines.errors import UserError
from engines.onnx_model import is_quantized, load_onnx

FP32_MODEL_HINT = "pass the FP32 ONNX model written by 'mimicnorm-deploy export'"


def load_fp32_model(path: Path) -> onnx.ModelProto:
    """engines.onnx_model.load_onnx, plus: not yet quantized, and with a layer worth quantizing."""
    model = load_onnx(path, hint=FP32_MODEL_HINT)
    if is_quantized(model):
        raise UserError(f"{path}: already quantized (has Q/DQ or quantized ops); pass the FP32 model")
    if not any(node.op_type in WEIGHTED_OPS for node in model.graph.node):
        raise UserError(f"{path}: model has no Conv, Gemm or MatMul to quantize; pass the CNN's FP32 model")
    return model


def image_input(model: onnx.ModelProto, path: Path) -> tuple[str, list[int | None]]:
    """Name and N, C, H, W dims (None where symbolic) of the model's one image input."""
    initializer_names = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise UserError(
            f"{path}: model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "calibration feeds one image input: export the model with a single input"
        )
    tensor_type = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise UserError(f"{path}: input '{inputs[0].name}' is not a float32 N x C x H x W tensor; export the FP32 CNN")
    return inputs[0].name, dims


def calibration_batch_images(
    images: np.ndarray, input_name: str, dims: list[int | None], batch_size: int, path: Path
) -> np.ndarray:
    """Check that `images` fit the model input and make at least one batch; return them as float32."""
    images = np.asarray(images)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise UserError(
            f"calibration images are {images.dtype} with shape {images.shape}; pass float32 model inputs "
            "N x C x H x W (engines.artifacts.load_image_set applies the image set's scale)"
        )
    if len(images) == 0:
        raise UserError("calibration set is empty; pass the calibration set written by 'mimicnorm-deploy prepare-data'")
    if len(images) < batch_size:
        raise UserError(
            f"calibration set has {len(images)} images, fewer than one batch of {batch_size}; "
            "pass more images or a smaller batch size"
        )
    if not np.isfinite(images).all():
        raise UserError("calibration images contain NaN or infinity; re-run 'mimicnorm-deploy prepare-data'")
    if any(want is not None and want != got for want, got in zip(dims[1:], images.shape[1:], strict=True)):
        expected = " x ".join(str(d) if d is not None else "?" for d in dims[1:])
        raise UserError(
            f"calibration images are {' x '.join(map(str, images.shape[1:]))} per image but input "
            f"'{input_name}' of {path} takes {expected}; write the calibration set at the model's input size "
            "('mimicnorm-deploy prepare-data --image-size')"
        )
    fixed_batch = dims[0]
    if fixed_batch is not None and (batch_size != fixed_batch or len(images) % fixed_batch):
        raise UserError(
            f"{path}: input '{input_name}' has a fixed batch of {fixed_batch}; use batch size {fixed_batch} "
            f"and a multiple of {fixed_batch} images, or export with a dynamic batch axis"
        )
    return images.astype(np.float32, copy=False)


def num_classes(model: onnx.ModelProto) -> int | None:
    """The size of the model's first output's last axis (the logits), None when symbolic."""
    dims = model.graph.output[0].type.tensor_type.shape.dim if model.graph.output else []
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
