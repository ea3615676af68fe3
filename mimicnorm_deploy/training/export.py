"""ONNX export of a frozen checkpoint, with the checks a deployment needs before it ships."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from engines.artifacts import atomic_path
from engines.errors import UserError
from engines.onnx_model import load_onnx
from engines.onnxruntime.session import run_model
from mimicnorm_deploy.training.checkpoint import INPUT_NAME, OUTPUT_NAME, load_checkpoint
from mimicnorm_deploy.training.freeze import ATOL, RTOL, default_check_images

# Opset 18 is what torch's exporter writes natively (asking for 17 triggers a version conversion
# that fails on ReduceMean); TensorRT 10.x and ONNX Runtime both read it.
OPSET = 18


@dataclass
class ExportReport:
    path: str
    opset: int
    nodes: dict[str, int]
    max_abs_diff_vs_torch: float
    tolerance: float


def export_onnx(frozen_checkpoint: str | os.PathLike, out_path: str | os.PathLike) -> ExportReport:
    """Export a frozen model: dynamic batch axis, full onnx.checker pass, no BatchNormalization
    node, and ONNX Runtime output equal to torch's on a check batch. Nothing is written unless
    every check passes."""
    model, meta = load_checkpoint(frozen_checkpoint)
    if meta.frozen_from is None:
        raise UserError(
            f"{frozen_checkpoint}: a trained, unfrozen checkpoint ({meta.norm}); run 'mimicnorm-deploy freeze' "
            "first, export takes its output"
        )
    images = default_check_images(meta, count=8)
    with atomic_path(out_path) as tmp:
        # The exporter prints progress and warns about its own internals; neither is for users.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (images,), str(tmp), dynamo=True, opset_version=OPSET, external_data=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )  # fmt: skip
        graph = load_onnx(tmp, full_check=True, hint="the exporter wrote an invalid model; report it")
        nodes: dict[str, int] = {}
        for node in graph.graph.node:
            nodes[node.op_type] = nodes.get(node.op_type, 0) + 1
        if "BatchNormalization" in nodes:
            raise UserError(f"{frozen_checkpoint}: exported graph still has BatchNormalization nodes; re-run freeze")
        with torch.inference_mode():
            expected = model(images).numpy()
        # A different batch size than the trace's proves the batch axis is really dynamic.
        got = run_model(tmp, images.numpy(), batch_size=3)
        tolerance = ATOL + RTOL * float(np.abs(expected).max())
        max_diff = float(np.abs(expected - got).max())
        if max_diff > tolerance:
            raise UserError(f"exported ONNX differs from the frozen model (max |diff| {max_diff:.3g}); report it")
    return ExportReport(str(out_path), OPSET, nodes, max_diff, tolerance)


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
