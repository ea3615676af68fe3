from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from qdq_helpers import count_qdq, quantize
from tiny_onnx import make_tiny_resnet, random_images

import calibration.quantize
from calibration.metrics import sqnr_db, top1_agreement
from calibration.qdq import (
    dangling_qdq,
    qdq_zero_point_violations,
    residual_branch_inputs,
    tensorrt_placement_violations,
)
from calibration.quantize import QuantizeConfig, write_qdq_model
from calibration.ranges import calibrate_ranges
from engines.errors import UserError

WEIGHTS = {"conv1.weight": 4, "conv2.weight": 4, "fc.weight": 3}  # weight -> output channels (axis 0)
WEIGHTS_Q = {f"{name}_quantized" for name in WEIGHTS}  # ORT's names for the int8 weight initializers


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    return make_tiny_resnet(tmp_path_factory.mktemp("fp32") / "model.onnx")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return random_images(64)


def run(model_path, images: np.ndarray, *, int8_kernels: bool = True) -> np.ndarray:
    """Logits from ONNX Runtime; int8_kernels=False disables graph optimizations so Q/DQ is
    simulated in float instead of fused into ORT's int8 CPU kernels."""
    options = ort.SessionOptions()
    if not int8_kernels:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def weight_dequantize_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """FP32 weight name -> the DequantizeLinear that now produces it."""
    return {node.input[0].removesuffix("_quantized"): node for node in model.graph.node if node.input[0] in WEIGHTS_Q}


def test_quantized_model_is_valid_and_close_to_fp32(fp32_model, images, tmp_path):
    out_dir = tmp_path / "out"
    result = quantize(fp32_model, images, out_dir / "model.int8.onnx", QuantizeConfig(batch_size=16))

    assert sorted(p.name for p in out_dir.iterdir()) == ["model.int8.onnx"]  # no ORT or atomic-write leftovers
    assert sorted(p.name for p in fp32_model.parent.iterdir()) == ["model.onnx"]  # nothing written by the input
    model = onnx.load(result.output_path)
    onnx.checker.check_model(model, full_check=True)
    counts = count_qdq(model)
    # activations x_norm, r1 (read by conv2 and the residual Add as its skip input), flat; three weights
    assert counts == {"QuantizeLinear": 3, "DequantizeLinear": 6}
    assert result.num_calibration_images == 64
    assert {"conv1", "conv2", "fc", "residual_add"} <= set(result.quantized_nodes)
    assert result.config["per_channel"] is False and result.config["extra_options"]["ActivationSymmetric"] is True

    reference = run(fp32_model, images)
    assert top1_agreement(reference, run(result.output_path, images)) >= 0.95
    assert sqnr_db(reference, run(result.output_path, images, int8_kernels=False)) > 25


@pytest.mark.parametrize("per_channel", [False, True])
def test_zero_points_are_int8_zeros_and_biases_stay_float(fp32_model, images, tmp_path, per_channel):
    result = quantize(fp32_model, images, tmp_path / "q.onnx", QuantizeConfig(per_channel=per_channel))
    model = onnx.load(result.output_path)
    assert qdq_zero_point_violations(model) == []
    values = arrays(model)
    qdq_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq_nodes
    for node in qdq_nodes:
        zero_point = values[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    # TensorRT cannot parse an int32 DequantizeLinear: biases must reach Conv/Gemm as float initializers.
    biases = {"conv1.bias", "conv2.bias", "fc.bias"}
    assert biases <= {init.name for init in model.graph.initializer if init.data_type == TensorProto.FLOAT}
    assert not any(init.data_type == TensorProto.INT32 for init in model.graph.initializer)


def test_per_channel_weight_scales_on_axis_0(fp32_model, images, tmp_path):
    per_channel = onnx.load(
        quantize(fp32_model, images, tmp_path / "pc.onnx", QuantizeConfig(per_channel=True)).output_path
    )
    per_tensor = onnx.load(quantize(fp32_model, images, tmp_path / "pt.onnx", QuantizeConfig()).output_path)
    for model, channelwise in ((per_channel, True), (per_tensor, False)):
        values = arrays(model)
        dequantize = weight_dequantize_nodes(model)
        assert set(dequantize) == set(WEIGHTS)
        for weight, out_channels in WEIGHTS.items():
            node = dequantize[weight]
            scale = values[node.input[1]]
            axis = {a.name: a.i for a in node.attribute}.get("axis", 1)
            if channelwise:
                assert axis == 0 and scale.shape == (out_channels,), weight
                assert len(set(scale.tolist())) == out_channels  # really one scale per channel
            else:
                assert scale.shape == (), weight


def test_reduce_range_gives_7_bit_weights(fp32_model, images, tmp_path):
    def largest_weight_level(reduce_range: bool) -> int:
        config = QuantizeConfig(per_channel=True, reduce_range=reduce_range)
        values = arrays(onnx.load(quantize(fp32_model, images, tmp_path / "q.onnx", config).output_path))
        return max(int(np.abs(values[name]).max()) for name in WEIGHTS_Q)

    # ORT's reduced symmetric int8 range is [-64, 64] (not [-64, 63]); full range is [-127, 127].
    assert largest_weight_level(True) == 64
    assert largest_weight_level(False) == 127


def test_reduce_range_int8_kernels_match_float_simulation(fp32_model, images, tmp_path):
    # docs/BACKGROUND.md section 3: without VNNI, ORT's fused int8 kernels saturate on full-range weights;
    # with 7-bit weights they must agree with the float simulation of the same Q/DQ file on any CPU.
    config = QuantizeConfig(per_channel=True, reduce_range=True)
    path = quantize(fp32_model, images, tmp_path / "q.onnx", config).output_path
    reference = run(fp32_model, images)
    kernels, simulated = (
        sqnr_db(reference, run(path, images)),
        sqnr_db(reference, run(path, images, int8_kernels=False)),
    )
    assert simulated > 25
    assert abs(kernels - simulated) < 1.0


def test_minmax_scales_do_not_depend_on_batch_size(fp32_model, images, tmp_path):
    scales = [
        quantize(fp32_model, images, tmp_path / f"b{b}.onnx", QuantizeConfig(batch_size=b)).activation_scales
        for b in (1, 16, 64)
    ]
    assert set(scales[0]) == set(scales[1]) == set(scales[2])
    for name in scales[0]:
        np.testing.assert_allclose([s[name] for s in scales[1:]], scales[0][name], rtol=1e-6, err_msg=name)


def test_activation_scales_are_amax_over_127_under_fp32_names(fp32_model, images, tmp_path):
    config = QuantizeConfig(placement="onnxruntime")  # quantizes outputs too, the graph output among them
    scales = quantize(fp32_model, images, tmp_path / "q.onnx", config).activation_scales
    # ORT renames the quantized graph output; the result maps it back to the FP32 name.
    assert {"images", "x_norm", "c1", "r1", "c2", "res", "logits"} <= set(scales)

    probe = onnx.load(fp32_model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("c1", "res"))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, c1, res = session.run(None, {"images": images})
    for name, values in (("images", images), ("c1", c1), ("res", res), ("logits", logits)):
        assert scales[name] == pytest.approx(float(np.abs(values).max()) / 127, rel=1e-6), name


# ORT gives a Relu's (or Clip's) input the Relu's output range, and a value-preserving op's
# output (Flatten) its input's range; every other scale is the tensor's own amax / 127.
ORT_SHARED_RANGES = {"c1": "r1", "res": "r2", "flat": "pooled"}


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_written_scales_are_the_chosen_methods_amax_over_127(fp32_model, images, tmp_path, method):
    ranges = calibrate_ranges(fp32_model, images, method, batch_size=16)
    result = write_qdq_model(fp32_model, ranges, tmp_path / "q.onnx", placement="onnxruntime")
    assert set(result.activation_scales) == set(ranges.amax)  # every tensor of the graph
    for name, scale in result.activation_scales.items():
        amax = ranges.amax[ORT_SHARED_RANGES.get(name, name)]
        assert scale == float(np.float32(amax) / np.float32(127)), name
    assert result.amax == ranges.amax and result.config["method"] == method
    assert qdq_zero_point_violations(onnx.load(result.output_path)) == []


def test_quantize_uses_the_configured_method(fp32_model, images, tmp_path):
    config = QuantizeConfig(method="percentile", percentile=99.0, batch_size=16)
    result = quantize(fp32_model, images, tmp_path / "q.onnx", config)
    ranges = calibrate_ranges(fp32_model, images, "percentile", percentile=99.0, batch_size=16)
    assert result.amax == ranges.amax
    assert result.config["method"] == "percentile" and result.config["percentile"] == 99.0
    minmax = calibrate_ranges(fp32_model, images, "minmax").amax
    assert result.activation_scales["r1"] < minmax["r1"] / 127  # really clipped, not MinMax under another name


def test_excluded_nodes_stay_float(fp32_model, images, tmp_path):
    ranges = calibrate_ranges(fp32_model, images)
    result = write_qdq_model(fp32_model, ranges, tmp_path / "q.onnx", nodes_to_exclude=["conv2"])
    model = onnx.load(result.output_path)
    onnx.checker.check_model(model, full_check=True)
    nodes = {node.name: node for node in model.graph.node}
    # float activation and weight, though r1 stays quantized for the residual Add that shares it
    assert list(nodes["conv2"].input) == ["r1", "conv2.weight", "conv2.bias"]
    assert nodes["residual_add"].input[1] == "r1_DequantizeLinear_Output"
    assert "conv2" not in result.quantized_nodes
    assert {"conv1", "fc"} <= set(result.quantized_nodes) and result.excluded_nodes == ["conv2"]
    assert sqnr_db(run(fp32_model, images), run(result.output_path, images, int8_kernels=False)) > 25

    # fc was the only reader of flat's Q/DQ pair: no pair may be left dangling
    head_float = onnx.load(
        write_qdq_model(fp32_model, ranges, tmp_path / "q1.onnx", nodes_to_exclude=["fc"]).output_path
    )
    read = {name for node in head_float.graph.node for name in node.input} | {o.name for o in head_float.graph.output}
    assert all(node.output[0] in read for node in head_float.graph.node)
    assert next(node for node in head_float.graph.node if node.name == "fc").input[0] == "flat"
    with pytest.raises(UserError, match="no node named 'conv9'"):
        write_qdq_model(fp32_model, ranges, tmp_path / "q2.onnx", nodes_to_exclude=["conv9"])


def test_ranges_of_another_model_are_refused(fp32_model, images, tmp_path):
    other = make_tiny_resnet(tmp_path / "other.onnx", seed=3)
    with pytest.raises(UserError, match="calibrated on another model"):
        write_qdq_model(other, calibrate_ranges(fp32_model, images), tmp_path / "q.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.onnx"]


def _depthwise_bn_folded_like(path: Path, spread: float) -> Path:
    """A depthwise conv as BN folding leaves it: channel 0's weights are `spread` times larger but its
    input is as much smaller, so every channel's output has the same range. Per-tensor weight
    scales then leave channels 1..3 about 127/spread levels; per-channel scales do not."""
    rng = np.random.default_rng(0)
    gains = np.array([spread, 1.0, 1.0, 1.0])
    initializers = [
        numpy_helper.from_array((1 / gains).reshape(1, 4, 1, 1).astype(np.float32), "in_scale"),
        numpy_helper.from_array(
            (rng.normal(0, 1 / 3, (4, 1, 3, 3)) * gains[:, None, None, None]).astype(np.float32), "dw.weight"
        ),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "dw.bias"),
        numpy_helper.from_array(rng.normal(0, 0.5, (3, 4)).astype(np.float32), "fc.weight"),
    ]
    nodes = [
        helper.make_node("Mul", ["images", "in_scale"], ["x"], name="input_scale"),
        helper.make_node("Conv", ["x", "dw.weight", "dw.bias"], ["d"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "depthwise",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_uneven_channel_ranges_hurt_per_tensor_more_than_per_channel(tmp_path):
    # Weight level, on the tiny ResNet with a planted 100x channel: the small channels' weights
    # survive per-channel INT8 but collapse to a level or two per tensor.
    planted = make_tiny_resnet(tmp_path / "planted.onnx", channel_scales=np.array([100, 1, 1, 1]))
    images = random_images(32)
    fp32_weight = arrays(onnx.load(planted))["conv1.weight"]

    def worst_channel_sqnr(per_channel: bool) -> float:
        model = onnx.load(
            quantize(planted, images, tmp_path / "q.onnx", QuantizeConfig(per_channel=per_channel)).output_path
        )
        node, values = weight_dequantize_nodes(model)["conv1.weight"], arrays(model)
        scale = values[node.input[1]].reshape(-1, 1, 1, 1) if per_channel else values[node.input[1]]
        dequantized = values[node.input[0]].astype(np.float32) * scale
        return min(sqnr_db(fp32_weight[c], dequantized[c]) for c in range(4))

    assert worst_channel_sqnr(per_channel=True) > 30
    assert worst_channel_sqnr(per_channel=False) < 15

    # End to end, on a depthwise conv whose outputs have even ranges (as after BN folding).
    # (The planted ResNet also spreads conv1's output range 100x, which per-tensor activation
    # quantization pays for in both modes, so it cannot show this difference end to end.)
    depthwise = _depthwise_bn_folded_like(tmp_path / "dw.onnx", spread=100.0)
    images = random_images(64, in_chans=4)
    reference = run(depthwise, images)
    sqnr = {
        per_channel: sqnr_db(
            reference,
            run(
                quantize(
                    depthwise, images, tmp_path / "dwq.onnx", QuantizeConfig(per_channel=per_channel)
                ).output_path,
                images,
                int8_kernels=False,
            ),
        )
        for per_channel in (False, True)
    }
    assert sqnr[True] > sqnr[False] + 6


def _relu_only_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["y"], name="relu")],
        "relu",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _already_quantized(tmp_path: Path, fp32_model: Path, images: np.ndarray) -> Path:
    return Path(quantize(fp32_model, images, tmp_path / "int8.onnx", QuantizeConfig()).output_path)


@pytest.mark.parametrize(
    ("make_model", "n_images", "config", "message"),
    [
        (lambda tmp, fp32, imgs: tmp / "missing.onnx", 64, QuantizeConfig(), "no such file"),
        (
            lambda tmp, fp32, imgs: _write(tmp / "text.onnx", b"this is not an ONNX model\n"),
            64,
            QuantizeConfig(),
            "not an ONNX model",
        ),
        (
            lambda tmp, fp32, imgs: _write(tmp / "noise.onnx", np.random.default_rng(0).bytes(4096)),
            64,
            QuantizeConfig(),
            "not an ONNX model",
        ),
        (lambda tmp, fp32, imgs: _write(tmp / "empty.onnx", b""), 64, QuantizeConfig(), "not an ONNX model"),
        (_already_quantized, 64, QuantizeConfig(), "already quantized .*; pass the FP32 model"),
        (lambda tmp, fp32, imgs: _relu_only_model(tmp / "relu.onnx"), 64, QuantizeConfig(), "no Conv, Gemm or MatMul"),
        (lambda tmp, fp32, imgs: fp32, 0, QuantizeConfig(), "calibration set is empty"),
        (lambda tmp, fp32, imgs: fp32, 10, QuantizeConfig(batch_size=32), "has 10 images, fewer than one batch of 32"),
        (lambda tmp, fp32, imgs: fp32, 64, QuantizeConfig(method="kl"), "use one of: minmax, percentile"),
        (lambda tmp, fp32, imgs: fp32, 64, QuantizeConfig(batch_size=0), "batch size 0"),
    ],
)
def test_bad_input_raises_user_error_and_writes_nothing(
    fp32_model, images, tmp_path, make_model, n_images, config, message
):
    (tmp_path / "in").mkdir()
    model_path = make_model(tmp_path / "in", fp32_model, images)
    out_dir = tmp_path / "out"
    with pytest.raises(UserError, match=message) as error:
        quantize(model_path, images[:n_images], out_dir / "model.int8.onnx", config)
    assert "\n" not in str(error.value)
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize(
    ("bad_images", "message"),
    [
        ((random_images(8) * 255).astype(np.uint8), "pass float32 model inputs"),
        (random_images(8, size=16), "per image but input 'images'"),
        (np.full((8, 1, 8, 8), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_calibration_images_raise_user_error(fp32_model, tmp_path, bad_images, message):
    with pytest.raises(UserError, match=message):
        quantize(fp32_model, bad_images, tmp_path / "q.onnx", QuantizeConfig(batch_size=8))
    assert not any(tmp_path.iterdir())


def test_refuses_to_overwrite_its_input(fp32_model, images):
    with pytest.raises(UserError, match="overwrite"):
        quantize(fp32_model, images, fp32_model, QuantizeConfig())
    onnx.checker.check_model(onnx.load(fp32_model))


def test_failed_check_leaves_no_output(fp32_model, images, tmp_path, monkeypatch):
    monkeypatch.setattr(calibration.quantize, "qdq_zero_point_violations", lambda model: ["c1_QuantizeLinear"])
    with pytest.raises(RuntimeError, match="internal error.*c1_QuantizeLinear"):
        quantize(fp32_model, images, tmp_path / "q.onnx", QuantizeConfig())
    assert not any(tmp_path.iterdir())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_uint8_activations_for_onnx_runtime_on_x86(tmp_path):
    """ONNX Runtime's U8S8 form: uint8 activations over the observed (sign-aware) range, weights
    still symmetric int8, and outputs as close to FP32 as the symmetric encoding gives."""
    import onnxruntime as ort
    from onnx import numpy_helper

    model = make_tiny_resnet(tmp_path / "m.onnx")
    images = random_images(64)
    # reduce_range: 7-bit weights, as the cpu target uses on x86 without VNNI (where this test
    # may run); with full 8-bit weights ORT's fused kernels saturate there.
    ort_cpu = {"per_channel": True, "reduce_range": True, "placement": "onnxruntime"}
    uint8 = quantize(model, images, tmp_path / "u8.onnx", QuantizeConfig(**ort_cpu, activations="uint8"))
    symmetric = quantize(model, images, tmp_path / "s8.onnx", QuantizeConfig(**ort_cpu))
    assert uint8.config["activation_type"] == "QUInt8" and symmetric.config["activation_type"] == "QInt8"

    graph = onnx.load(str(tmp_path / "u8.onnx"))
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    # From the FP32 graph: with uint8 activations ORT drops the Relu nodes (zero point 0 clamps).
    relu_outputs = {n.output[0] for n in onnx.load(str(model)).graph.node if n.op_type == "Relu"}
    conv_gemm_weights = {n.input[1] for n in graph.graph.node if n.op_type in ("Conv", "Gemm")}
    activation_zero_points, weight_zero_points = [], []
    for node in graph.graph.node:
        is_weight = node.op_type == "DequantizeLinear" and node.output[0] in conv_gemm_weights
        if node.op_type != "QuantizeLinear" and not is_weight:
            continue
        zero_point = initializers[node.input[2]]
        if node.op_type == "QuantizeLinear":
            activation_zero_points.append((node.input[0], zero_point))
        else:
            weight_zero_points.append(zero_point)
    assert all(zp.dtype == np.uint8 for _, zp in activation_zero_points)
    # A ReLU output never goes below 0: its uint8 range starts at 0, every level is used.
    assert any(name in relu_outputs and int(zp) == 0 for name, zp in activation_zero_points)
    assert weight_zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in weight_zero_points)

    def logits(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images})[0]

    reference = logits(model)
    assert sqnr_db(reference, logits(tmp_path / "u8.onnx")) > 25
    assert sqnr_db(reference, logits(tmp_path / "u8.onnx")) > sqnr_db(reference, logits(tmp_path / "s8.onnx")) - 3


@pytest.mark.parametrize("per_channel", [False, True])
def test_tensorrt_placement_quantizes_layer_inputs_and_the_residual_skip_only(fp32_model, images, tmp_path,
                                                                             per_channel):  # fmt: skip
    result = write_qdq_model(fp32_model, calibrate_ranges(fp32_model, images), tmp_path / "q.onnx",
                             per_channel=per_channel)  # fmt: skip
    model = onnx.load(result.output_path)
    onnx.checker.check_model(model, full_check=True)
    # conv1 reads x_norm, conv2 and the residual Add's skip input read r1, fc reads flat: nothing else,
    # not the Add's branch input c2 (fused into conv2), no output of any layer (c1, res, logits), not the
    # input scale-shift (images, x_scaled)
    assert set(result.activation_scales) == {"x_norm", "r1", "flat"}
    assert tensorrt_placement_violations(model) == [] and dangling_qdq(model) == []
    assert qdq_zero_point_violations(model) == []
    producers = {output: node for node in model.graph.node for output in node.output}
    nodes = {node.name: node for node in model.graph.node}
    for name in ("conv1", "conv2", "fc"):
        assert [producers[t].op_type for t in nodes[name].input[:2]] == ["DequantizeLinear"] * 2, name
    assert list(nodes["residual_add"].input) == ["c2", "r1_DequantizeLinear_Output"]
    assert nodes["input_shift"].input[0] == "x_scaled" and nodes["relu1"].input[0] == "c1"
    assert set(result.quantized_nodes) == {"conv1", "conv2", "residual_add", "fc"}
    assert sqnr_db(run(fp32_model, images), run(result.output_path, images, int8_kernels=False)) > 25


def _add_graph(branch_ops: list[str], skip_ops: list[str]) -> onnx.ModelProto:
    """x -> Relu -> two paths -> Add: each path a chain of "conv" (3x3 Conv) and "relu" steps."""
    initializers = [numpy_helper.from_array(np.full((1, 1, 1, 1), 0.5, np.float32), "w")]
    nodes = [helper.make_node("Relu", ["x"], ["start"], name="start")]
    ends = []
    for path, ops in (("branch", branch_ops), ("skip", skip_ops)):
        tensor = "start"
        for index, op in enumerate(ops):
            name = f"{path}{index}"
            inputs = [tensor, "w"] if op == "conv" else [tensor]
            nodes.append(helper.make_node("Conv" if op == "conv" else "Relu", inputs, [name], name=name))
            tensor = name
        ends.append(tensor)
    nodes.append(helper.make_node("Add", ends, ["sum"], name="add"))
    graph = helper.make_graph(nodes, "add", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 1, 4, 4])],
                              initializers)  # fmt: skip
    return helper.make_model(graph)


@pytest.mark.parametrize(
    ("branch_ops", "skip_ops", "expected"),
    [
        (["conv", "relu", "conv"], [], 0),  # identity skip: the Conv-fed input is the branch
        (["conv", "relu", "conv"], ["conv"], 0),  # shortcut Conv: the longer path is the branch
        (["conv"], ["conv", "relu", "conv"], 1),  # the same, inputs swapped
        (["conv", "relu"], ["relu"], None),  # no Conv feeds either input: both are quantized
    ],
)
def test_residual_branch_is_the_conv_fed_input_on_the_longer_path(branch_ops, skip_ops, expected):
    assert residual_branch_inputs(_add_graph(branch_ops, skip_ops)) == {"add": expected}


def test_placement_checks_catch_what_tensorrt_would_not_fuse(fp32_model, images, tmp_path):
    ranges = calibrate_ranges(fp32_model, images)
    # ONNX Runtime's own placement quantizes Relu, pooling and the input shift: not TensorRT's pattern
    ort_model = onnx.load(write_qdq_model(fp32_model, ranges, tmp_path / "ort.onnx", placement="onnxruntime")
                          .output_path)  # fmt: skip
    assert any("reads a dequantized tensor" in v for v in tensorrt_placement_violations(ort_model))
    assert dangling_qdq(ort_model) == []

    model = onnx.load(write_qdq_model(fp32_model, ranges, tmp_path / "trt.onnx").output_path)
    nodes = {node.name: node for node in model.graph.node}
    # Q/DQ on the branch input too (the old placement) is what keeps TensorRT from fusing conv2 + Add
    both_sides = onnx.ModelProto.FromString(model.SerializeToString())
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "c2_scale")
    zero_point = numpy_helper.from_array(np.array(0, np.int8), "c2_zero_point")
    both_sides.graph.initializer.extend([scale, zero_point])
    add_index = next(i for i, node in enumerate(both_sides.graph.node) if node.name == "residual_add")
    both_sides.graph.node.insert(add_index, helper.make_node(
        "DequantizeLinear", ["c2_q", "c2_scale", "c2_zero_point"], ["c2_dq"], name="c2_dq"))  # fmt: skip
    both_sides.graph.node.insert(add_index, helper.make_node(
        "QuantizeLinear", ["c2", "c2_scale", "c2_zero_point"], ["c2_q"], name="c2_q"))  # fmt: skip
    both_sides.graph.node[add_index + 2].input[0] = "c2_dq"
    violations = tensorrt_placement_violations(both_sides)
    assert len(violations) == 1 and violations[0].startswith("residual_add: residual Add must quantize its skip input")

    float_weight = onnx.ModelProto.FromString(model.SerializeToString())
    conv = next(node for node in float_weight.graph.node if node.name == "conv1")
    conv.input[1] = nodes["conv1"].input[1].removesuffix("_DequantizeLinear_Output")
    float_weight.graph.initializer.append(numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), conv.input[1]))
    assert "conv1: Conv with only one of input and weight quantized" in tensorrt_placement_violations(float_weight)


def test_tensorrt_placement_with_every_layer_excluded_is_refused(fp32_model, images, tmp_path):
    with pytest.raises(UserError, match="every quantizable layer is excluded"):
        write_qdq_model(fp32_model, calibrate_ranges(fp32_model, images), tmp_path / "q.onnx",
                        nodes_to_exclude=["conv1", "conv2", "residual_add", "fc"])  # fmt: skip
    assert not (tmp_path / "q.onnx").exists()
