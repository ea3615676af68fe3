"""Cross-layer equalization (CLE) of an FP32 ONNX CNN: what a BN network's owner does before
per-tensor INT8 instead of retraining (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", arXiv 1906.04721, section 4.1).

For two convolutions joined by a ReLU, conv1 -> Relu -> conv2, and any s_i > 0,
relu(x / s_i) = relu(x) / s_i, so dividing output channel i of conv1 (weights and bias) by s_i
and multiplying input channel i of conv2 by s_i computes the same function. The paper's choice
s_i = sqrt(r1_i / r2_i), with r1_i and r2_i the largest |weight| of channel i in conv1 (as an
output) and in conv2 (as an input), gives both the same range sqrt(r1_i * r2_i): after BN
folding, one channel's tiny range no longer wastes a per-tensor scale. Pairs sharing a conv
(MobileNetV2's expand -> depthwise -> project) are swept repeatedly until the scales settle.

What is equalized, exactly in FP32 (only float rounding changes):
- conv1 -> Relu -> conv2 where conv1's output feeds only that Relu and the Relu's output only
  conv2 (a residual Add or a concat reading the same tensor would see the rescaled channels);
- conv2 dense or grouped, depthwise included; weights and biases are initializers used once.
What is not:
- ReLU6 (Clip with a finite max): clip(x / s, 0, 6) != clip(x, 0, 6) / s. The paper replaces
  ReLU6 by ReLU first, which changes the FP32 model; this transform leaves such pairs alone (the
  networks here use ReLU). A Clip with min 0 and no max is a ReLU and is equalized.

Bias absorption (the paper's section 4.1.2), `absorb_biases`, is a separate, data-driven step:
where output channel i of conv1 stays at or above c_i > 0 on every calibration image and
position, relu(x) = relu(x - c_i) + c_i there, so c_i can leave conv1's bias (narrowing the range
the Relu's output must be quantized over) and re-enter conv2's bias as c_i times conv2's weights
of that input channel. The paper estimates c_i from BN statistics (beta - 3 gamma), which a folded
model no longer has; here c_i is the channel's smallest pre-activation on the calibration images.
It is exact on those images and only approximate on others (an image driving channel i below c_i
gets relu(x - c_i) = 0 where x - c_i was owed), so its effect is measured, not assumed. A conv2
with padding is left alone: its zero padding would stand for -c_i after the shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calibration.inputs import load_fp32_model
from engines.artifacts import atomic_path
from engines.onnxruntime.session import create_session, session_batches

# Sweeps stop when every scale of a sweep is within this of 1 (the paper iterates to convergence).
CONVERGED = 1e-4
MAX_SWEEPS = 100


@dataclass
class EqualizedPair:
    first: str  # node names
    second: str
    channels: int
    # Largest / median per-channel weight range of the first conv, before and after.
    first_spread_before: float
    first_spread_after: float


@dataclass
class EqualizeResult:
    pairs: list[EqualizedPair] = field(default_factory=list)
    sweeps: int = 0
    # Conv -> activation -> Conv chains left alone, with the reason.
    skipped: list[str] = field(default_factory=list)
    output_path: str = ""


@dataclass
class _Pair:
    first: onnx.NodeProto
    second: onnx.NodeProto


def channel_scales(first_ranges: np.ndarray, second_ranges: np.ndarray) -> np.ndarray:
    """The paper's s_i = sqrt(r1_i / r2_i); 1 where either range is 0 (a dead channel stays as it is)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.sqrt(first_ranges / second_ranges)
    return np.where((first_ranges > 0) & (second_ranges > 0), scales, 1.0)


def output_channel_ranges(weight: np.ndarray) -> np.ndarray:
    """max |W| per output channel of a conv weight (out, in / groups, kh, kw)."""
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def input_channel_ranges(weight: np.ndarray, groups: int) -> np.ndarray:
    """max |W| per *input* channel of a (grouped) conv weight: over the output channels that read it."""
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    grouped = np.abs(weight).reshape(groups, out_per_group, in_per_group, -1)
    return grouped.max(axis=(1, 3)).reshape(groups * in_per_group)


def scale_input_channels(weight: np.ndarray, groups: int, scales: np.ndarray) -> np.ndarray:
    """Multiply input channel i of a (grouped) conv weight by scales[i]."""
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    per_group = scales.reshape(groups, 1, in_per_group)
    shaped = weight.reshape(groups, out_per_group, in_per_group, -1) * per_group[..., None]
    return shaped.reshape(weight.shape)


def _spread(ranges: np.ndarray) -> float:
    median = float(np.median(ranges))
    return float(ranges.max() / median) if median > 0 else float("inf")


def _groups(node: onnx.NodeProto) -> int:
    return next((attr.i for attr in node.attribute if attr.name == "group"), 1)


def _is_relu(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[bool, str]:
    """(positively homogeneous, why not): Relu, or a Clip whose min is 0 and that has no max."""
    if node.op_type == "Relu":
        return True, ""
    if node.op_type != "Clip":
        return False, f"{node.op_type} between the convs"
    bounds = list(node.input[1:]) + [""] * (3 - len(node.input))
    low, high = bounds[0], bounds[1]
    if high:
        return False, "a Clip with a finite max (ReLU6) is not scale-equivariant"
    if not low or low not in constants or float(constants[low]) != 0.0:
        return False, "a Clip whose min is not the constant 0"
    return True, ""


def find_pairs(model: onnx.ModelProto) -> tuple[list[_Pair], list[str]]:
    """conv1 -> Relu -> conv2 pairs that can be equalized exactly, in graph order, and the reasons
    the other conv -> activation -> conv chains were left alone."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    uses = {name: len(nodes) for name, nodes in consumers.items()}
    outputs = {o.name for o in graph.output}

    def own_constant(node: onnx.NodeProto, index: int) -> bool:
        return len(node.input) > index and node.input[index] in constants and uses[node.input[index]] == 1

    pairs, skipped = [], []
    for first in graph.node:
        if first.op_type != "Conv" or not own_constant(first, 1):
            continue
        after = consumers.get(first.output[0], [])
        if len(after) != 1 or first.output[0] in outputs:
            continue
        activation = after[0]
        following = consumers.get(activation.output[0], [])
        if len(following) != 1 or following[0].op_type != "Conv":
            continue
        second = following[0]
        name = f"{first.name} -> {activation.name} -> {second.name}"
        exact, why = _is_relu(activation, constants)
        if not exact:
            skipped.append(f"{name}: {why}")
        elif activation.output[0] in outputs or second.input[0] != activation.output[0]:
            skipped.append(f"{name}: the activation is also a graph output or not the conv's data input")
        elif not own_constant(second, 1) or (len(first.input) > 2 and not own_constant(first, 2)):
            skipped.append(f"{name}: a weight or bias is not an initializer used by this conv alone")
        else:
            pairs.append(_Pair(first, second))
    return pairs, skipped


def equalize_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, EqualizeResult]:
    """A copy of `model` with every exact conv -> Relu -> conv pair equalized (see module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    pairs, skipped = find_pairs(model)
    inits = {init.name: init for init in model.graph.initializer}
    arrays = {name: numpy_helper.to_array(init).astype(np.float64) for name, init in inits.items()}
    before = {p.first.name: _spread(output_channel_ranges(arrays[p.first.input[1]])) for p in pairs}
    sweeps = 0
    while pairs and sweeps < MAX_SWEEPS:
        sweeps += 1
        largest_change = 0.0
        for pair in pairs:
            w1_name, w2_name = pair.first.input[1], pair.second.input[1]
            w1, w2, groups = arrays[w1_name], arrays[w2_name], _groups(pair.second)
            scales = channel_scales(output_channel_ranges(w1), input_channel_ranges(w2, groups))
            arrays[w1_name] = w1 / scales.reshape(-1, *([1] * (w1.ndim - 1)))
            if len(pair.first.input) > 2 and pair.first.input[2]:
                arrays[pair.first.input[2]] = arrays[pair.first.input[2]] / scales
            arrays[w2_name] = scale_input_channels(w2, groups, scales)
            largest_change = max(largest_change, float(np.abs(np.log(scales)).max()))
        if largest_change < CONVERGED:
            break
    touched = {name for p in pairs for name in (p.first.input[1], p.second.input[1], *p.first.input[2:3]) if name}
    for name in touched:
        inits[name].CopyFrom(numpy_helper.from_array(arrays[name].astype(np.float32), name))
    result = EqualizeResult(sweeps=sweeps, skipped=skipped)
    for pair in pairs:
        weight = arrays[pair.first.input[1]]
        result.pairs.append(EqualizedPair(pair.first.name, pair.second.name, weight.shape[0],
                                          before[pair.first.name], _spread(output_channel_ranges(weight))))  # fmt: skip
    return model, result


def write_equalized_model(model_path: str | Path, out_path: str | Path) -> EqualizeResult:
    """Equalize the FP32 model at `model_path` and write it (atomically) to `out_path`."""
    model, result = equalize_model(load_fp32_model(Path(model_path)))
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    result.output_path = str(out_path)
    return result


@dataclass
class AbsorbedBias:
    first: str  # node names
    second: str
    channels_shifted: int  # channels whose pre-activation stayed above 0 on every calibration image
    largest_shift: float  # the largest c_i moved from the first conv's bias to the second's


def _unpadded(node: onnx.NodeProto) -> bool:
    attrs = {attr.name: attr for attr in node.attribute}
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    pads = list(attrs["pads"].ints) if "pads" in attrs else []
    return auto_pad in ("NOTSET", "VALID") and not any(pads)


def channel_minima(model: onnx.ModelProto, tensors: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """The smallest value of each channel (axis 1) of `tensors` over `images`, every position."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in tensors)  # fmt: skip
    minima: dict[str, np.ndarray] = {}
    for outputs in session_batches(create_session(probe), images, output_names=tensors):
        for name, value in zip(tensors, outputs, strict=True):
            batch_min = value.min(axis=tuple(a for a in range(value.ndim) if a != 1))
            minima[name] = np.minimum(minima[name], batch_min) if name in minima else batch_min
    return minima


def absorb_biases(model: onnx.ModelProto, images: np.ndarray) -> tuple[onnx.ModelProto, list[AbsorbedBias]]:
    """A copy of `model` with bias absorbed (see module docstring) across every conv -> Relu -> conv
    pair that `find_pairs` accepts, whose convs both have a bias and whose second conv is unpadded."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    pairs, _ = find_pairs(model)  # conv1's bias and both weights are initializers of their conv alone
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    inits = {init.name: init for init in model.graph.initializer}
    pairs = [p for p in pairs if len(p.first.input) > 2 and p.first.input[2] and len(p.second.input) > 2
             and p.second.input[2] in inits and uses[p.second.input[2]] == 1 and _unpadded(p.second)]  # fmt: skip
    if not pairs:
        return model, []
    minima = channel_minima(model, [p.first.output[0] for p in pairs], images)
    absorbed = []
    for pair in pairs:
        shifts = np.maximum(minima[pair.first.output[0]].astype(np.float64), 0.0)
        b1_name, w2_name, b2_name = pair.first.input[2], pair.second.input[1], pair.second.input[2]
        b1, w2, b2 = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in (b1_name, w2_name, b2_name))
        groups = _groups(pair.second)
        # conv2's output o gains sum over its kernel and the input channels it reads of W2 * c.
        gained = scale_input_channels(w2, groups, shifts).reshape(w2.shape[0], -1).sum(axis=1)
        inits[b1_name].CopyFrom(numpy_helper.from_array((b1 - shifts).astype(np.float32), b1_name))
        inits[b2_name].CopyFrom(numpy_helper.from_array((b2 + gained).astype(np.float32), b2_name))
        absorbed.append(AbsorbedBias(pair.first.name, pair.second.name, int((shifts > 0).sum()),
                                     float(shifts.max())))  # fmt: skip
    return model, absorbed
