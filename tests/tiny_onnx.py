"""Small ONNX CNNs built with onnx.helper, so calibration and engine tests need no torch.

The graph mirrors what `mimicnorm-deploy export` writes for a frozen ResNet: an input
scale-shift, Conv+bias+Relu, a residual Add, global average pooling and a Gemm head, with a
dynamic batch axis named "batch", input "images" and output "logits".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def make_tiny_resnet(
    path: str | Path,
    *,
    seed: int = 0,
    in_chans: int = 1,
    size: int = 8,
    width: int = 4,
    num_classes: int = 3,
    channel_scales: np.ndarray | None = None,
) -> Path:
    """Write a tiny residual CNN to `path`; `channel_scales` multiplies the first conv's output
    channels (and divides them back in the next conv) to plant an uneven per-channel weight range,
    like BN folding does, without changing the function much."""
    rng = np.random.default_rng(seed)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(array.astype(np.float32), name)

    w1 = rng.normal(0, np.sqrt(2 / (in_chans * 9)), (width, in_chans, 3, 3))
    b1 = rng.normal(0, 0.1, width)
    w2 = rng.normal(0, np.sqrt(2 / (width * 9)), (width, width, 3, 3))
    if channel_scales is not None:
        w1 = w1 * channel_scales[:, None, None, None]
        b1 = b1 * channel_scales
        w2 = w2 / channel_scales[None, :, None, None]
    initializers = [
        init("in_scale", np.full((1, in_chans, 1, 1), 2.0)),
        init("in_shift", np.full((1, in_chans, 1, 1), -1.0)),
        init("conv1.weight", w1),
        init("conv1.bias", b1),
        init("conv2.weight", w2),
        init("conv2.bias", rng.normal(0, 0.1, width)),
        init("fc.weight", rng.normal(0, np.sqrt(1 / width), (num_classes, width))),
        init("fc.bias", rng.normal(0, 0.1, num_classes)),
    ]
    nodes = [
        helper.make_node("Mul", ["images", "in_scale"], ["x_scaled"], name="input_scale"),
        helper.make_node("Add", ["x_scaled", "in_shift"], ["x_norm"], name="input_shift"),
        helper.make_node("Conv", ["x_norm", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["res"], name="residual_add"),
        helper.make_node("Relu", ["res"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_resnet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", in_chans, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, path)
    return path


def random_images(n: int, *, seed: int = 1, in_chans: int = 1, size: int = 8) -> np.ndarray:
    """Model inputs in [0, 1], float32, N x C x H x W."""
    return np.random.default_rng(seed).random((n, in_chans, size, size), dtype=np.float32)


def make_tiny_mobilenet(
    path: str | Path,
    *,
    seed: int = 0,
    size: int = 8,
    width: int = 4,
    expand: int = 2,
    num_classes: int = 3,
    channel_scales: np.ndarray | None = None,
    relu6: bool = False,
) -> Path:
    """Write a tiny MobileNetV2-like CNN to `path`: a stem conv, then one inverted residual block
    (1x1 expand -> Relu -> 3x3 depthwise -> Relu -> 1x1 project, added to the stem's output),
    pooling and a Gemm head. `channel_scales` multiplies the depthwise conv's output channels (and
    divides them back in the projection), the uneven per-channel ranges BN folding makes there.
    `relu6` makes the block's activations Clip(0, 6)."""
    rng = np.random.default_rng(seed)
    hidden = width * expand

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    dw = rng.normal(0, np.sqrt(2 / 9), (hidden, 1, 3, 3))
    dw_bias = rng.normal(0, 0.1, hidden)
    project = rng.normal(0, np.sqrt(1 / hidden), (width, hidden, 1, 1))
    if channel_scales is not None:
        dw, dw_bias = dw * channel_scales[:, None, None, None], dw_bias * channel_scales
        project = project / channel_scales[None, :, None, None]
    initializers = [
        init("stem.weight", rng.normal(0, np.sqrt(2 / 9), (width, 1, 3, 3))),
        init("stem.bias", rng.normal(0, 0.1, width)),
        init("expand.weight", rng.normal(0, np.sqrt(2 / width), (hidden, width, 1, 1))),
        init("expand.bias", rng.normal(0, 0.1, hidden)),
        init("dw.weight", dw),
        init("dw.bias", dw_bias),
        init("project.weight", project),
        init("project.bias", rng.normal(0, 0.1, width)),
        init("fc.weight", rng.normal(0, np.sqrt(1 / width), (num_classes, width))),
        init("fc.bias", rng.normal(0, 0.1, num_classes)),
    ]
    if relu6:
        initializers += [init("zero", np.array(0.0)), init("six", np.array(6.0))]

    def activation(name: str, x: str, y: str) -> onnx.NodeProto:
        if relu6:
            return helper.make_node("Clip", [x, "zero", "six"], [y], name=name)
        return helper.make_node("Relu", [x], [y], name=name)

    nodes = [
        helper.make_node("Conv", ["images", "stem.weight", "stem.bias"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["s_act"], name="stem_relu"),
        helper.make_node("Conv", ["s_act", "expand.weight", "expand.bias"], ["e"], name="expand"),
        activation("expand_relu", "e", "e_act"),
        helper.make_node("Conv", ["e_act", "dw.weight", "dw.bias"], ["d"], name="dw", pads=[1, 1, 1, 1], group=hidden),
        activation("dw_relu", "d", "d_act"),
        helper.make_node("Conv", ["d_act", "project.weight", "project.bias"], ["p"], name="project"),
        helper.make_node("Add", ["p", "s_act"], ["res"], name="residual_add"),
        helper.make_node("GlobalAveragePool", ["res"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mobilenet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, path)
    return path
