from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from qdq_helpers import count_qdq
from tiny_onnx import make_tiny_resnet, random_images

from calibration.metrics import accuracy, sqnr_db
from calibration.plan import layer_sensitivity, plan_precision, write_int8_model, write_mixed_model
from calibration.qdq import qdq_zero_point_violations, quantizable_layers, tensorrt_placement_violations
from calibration.ranges import calibrate_ranges
from engines.errors import UserError
from engines.precision_plan import Gate, PrecisionPlan, holdout_needed

OUTLIER = 1000.0  # how much larger the planted layer's dead weights are


def planted_model(path: Path) -> Path:
    """images -> conv1 (planted) -> Relu -> conv2 (1x1) -> Relu -> pool -> Gemm.

    The images' channel 3 is always zero (an unused alpha channel), and conv1's weights reading it
    are OUTLIER times larger: harmless in float, but per-tensor (and per-channel) INT8 then sizes
    the weight scale for them and rounds every other weight of conv1 to zero. No activation range
    is uneven, so only conv1 is sensitive.
    """
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (4, 4, 3, 3))
    w1[:, 3] *= OUTLIER
    arrays = {
        "conv1.weight": w1,
        "conv1.bias": rng.normal(0, 0.1, 4),
        "conv2.weight": rng.normal(0, 0.7, (4, 4, 1, 1)),
        "conv2.bias": rng.normal(0, 0.1, 4),
        "fc.weight": rng.normal(0, 0.5, (3, 4)),
        "fc.bias": rng.normal(0, 0.1, 3),
    }
    nodes = [
        helper.make_node("Conv", ["images", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def images_for_planted(n: int, seed: int) -> np.ndarray:
    images = random_images(n, seed=seed, in_chans=4)
    images[:, 3] = 0.0  # the unused channel
    return images


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = planted_model(tmp_path_factory.mktemp("planted") / "model.onnx")
    ranges = calibrate_ranges(path, images_for_planted(64, seed=1), batch_size=32)
    return path, ranges, images_for_planted(96, seed=2)


def run(model_path: Path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def test_sensitivity_finds_the_planted_layer(planted):
    path, ranges, holdout = planted
    sensitivity = layer_sensitivity(path, ranges, holdout)
    assert [(s.node, s.op_type) for s in sensitivity] == [("conv1", "Conv"), ("conv2", "Conv"), ("fc", "Gemm")]
    by_node = {s.node: s.logits_sqnr_db for s in sensitivity}
    assert by_node["conv1"] < 10 and by_node["conv2"] > 30 and by_node["fc"] > 30


@pytest.mark.parametrize("high_precision", ["fp32", "fp16"])
def test_planner_moves_only_the_planted_layer(planted, tmp_path, high_precision):
    path, ranges, holdout = planted
    messages = []
    plan = plan_precision(
        path, ranges, holdout, Gate(min_logits_sqnr_db=30), high_precision=high_precision, progress=messages.append
    )
    assert plan.layers == {"conv1": high_precision, "conv2": "int8", "fc": "int8"}
    assert [(m.node, m.to) for m in plan.moved] == [("conv1", high_precision)]
    assert "most sensitive" in plan.moved[0].reason and "gate failed" in plan.moved[0].reason
    assert plan.result.passed and plan.result.logits_sqnr_db >= 30
    assert (plan.model_sha256, plan.calibration_sha256) == (ranges.model_sha256, ranges.calibration_sha256)
    assert any(m.startswith("plan: conv1 ->") for m in messages)
    assert [s.node for s in plan.sensitivity] == ["conv1", "conv2", "fc"]  # ranked because all INT8 failed

    # the written model is what the gate measured
    result = write_mixed_model(path, plan, ranges, tmp_path / "mixed.onnx")
    model = onnx.load(tmp_path / "mixed.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert qdq_zero_point_violations(model) == [] and count_qdq(model)["QuantizeLinear"] > 0
    assert {"conv2", "fc"} <= set(result.quantized_nodes) and "conv1" not in result.quantized_nodes
    assert sqnr_db(run(path, holdout), run(tmp_path / "mixed.onnx", holdout)) == pytest.approx(
        plan.result.logits_sqnr_db
    )
    if high_precision == "fp16":
        conv1 = next(node for node in model.graph.node if node.name == "conv1")
        weight = next(init for init in model.graph.initializer if init.name == conv1.input[1])
        assert weight.data_type == TensorProto.FLOAT16
        # FP16 Q/DQ (opset 19 scales), so no Cast stands between a DequantizeLinear and its layer
        initializers = {init.name: init for init in model.graph.initializer}
        qdq = [node for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert {initializers[node.input[1]].data_type for node in qdq} == {TensorProto.FLOAT16}
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 19
        assert tensorrt_placement_violations(model) == []


def test_sensitivity_ranks_on_the_first_held_out_images_and_the_gate_uses_all(planted, monkeypatch, tmp_path):
    import calibration.plan

    path, ranges, holdout = planted  # 96 images
    monkeypatch.setattr(calibration.plan, "SENSITIVITY_IMAGES", 40)
    plan = plan_precision(path, ranges, holdout, Gate(min_logits_sqnr_db=30))
    assert plan.sensitivity == layer_sensitivity(path, ranges, holdout[:40])
    assert plan.sensitivity != layer_sensitivity(path, ranges, holdout)
    assert plan.holdout_images == 96
    write_mixed_model(path, plan, ranges, tmp_path / "mixed.onnx")
    assert sqnr_db(run(path, holdout), run(tmp_path / "mixed.onnx", holdout)) == pytest.approx(
        plan.result.logits_sqnr_db
    )


def test_plan_json_round_trip(planted, tmp_path):
    path, ranges, holdout = planted
    plan = plan_precision(path, ranges, holdout, Gate(max_top1_drop=0.05, min_logits_sqnr_db=30))
    assert PrecisionPlan.load(plan.save(tmp_path / "plan.json")) == plan
    assert plan.high_precision_nodes == ["conv1"]


def test_gate_with_labels_measures_the_accuracy_drop(planted, tmp_path):
    path, ranges, holdout = planted
    labels = np.random.default_rng(0).integers(0, 3, len(holdout))
    gate = Gate(max_top1_drop=0.05, min_logits_sqnr_db=30)
    plan = plan_precision(path, ranges, holdout, gate, holdout_labels=labels)
    write_mixed_model(path, plan, ranges, tmp_path / "mixed.onnx")
    reference, mixed = run(path, holdout), run(tmp_path / "mixed.onnx", holdout)
    expected = accuracy(reference, labels) - accuracy(mixed, labels)
    assert plan.result.top1_drop == pytest.approx(expected)
    # the paired counts behind it: images FP32 gets right and the plan wrong, and the reverse
    fp32_right, plan_right = reference.argmax(1) == labels, mixed.argmax(1) == labels
    assert plan.result.images_lost == np.sum(fp32_right & ~plan_right)
    assert plan.result.images_gained == np.sum(~fp32_right & plan_right)
    assert plan.result.images == plan.holdout_images == 96
    assert plan.gate_resolution == pytest.approx(3 / 96)


@pytest.mark.parametrize(("max_top1_drop", "needed"), [(0.005, 600), (0.01, 300), (0.05, 60)])
def test_a_top1_gate_needs_three_over_the_gate_held_out_images(max_top1_drop, needed):
    assert holdout_needed(max_top1_drop) == needed
    Gate(max_top1_drop=max_top1_drop).check(needed)
    with pytest.raises(UserError, match=f"needs at least {needed} held-out images") as error:
        Gate(max_top1_drop=max_top1_drop).check(needed - 1)
    assert "\n" not in str(error.value)
    Gate(min_logits_sqnr_db=30).check(1)  # an SQNR gate has no image resolution


def test_a_gate_the_holdout_cannot_resolve_is_refused_before_any_work(planted):
    path, ranges, holdout = planted  # 96 images: they resolve 3.13 points, not 1
    with pytest.raises(UserError, match="needs at least 300 held-out images.*3.13 points"):
        plan_precision(path, ranges, holdout, Gate(max_top1_drop=0.01))


def test_gate_that_all_int8_passes_moves_nothing(tmp_path):
    path = make_tiny_resnet(tmp_path / "model.onnx")
    ranges = calibrate_ranges(path, random_images(64))
    messages = []
    plan = plan_precision(path, ranges, random_images(32, seed=5), Gate(max_top1_drop=0.2), progress=messages.append)
    assert plan.moved == [] and set(plan.layers.values()) == {"int8"}
    # no layer's sensitivity was measured: nothing had to be ranked
    assert plan.sensitivity == [] and not any(m.startswith("sensitivity:") for m in messages)
    assert plan.result.passed and any("every layer in INT8 passes the gate" in m for m in messages)
    assert list(plan.layers) == [node.name for node in quantizable_layers(onnx.load(path))]
    assert list(plan.layers) == ["conv1", "conv2", "residual_add", "fc"]  # the residual Add is a layer too


def test_unreachable_gate_raises_user_error(planted, tmp_path):
    path, ranges, holdout = planted
    # FP16 itself has about 60-70 dB of logits SQNR on this model: 150 dB is out of reach.
    with pytest.raises(UserError, match="even the all-fp16 model gives"):
        plan_precision(path, ranges, holdout, Gate(min_logits_sqnr_db=150), high_precision="fp16")


def test_all_high_precision_plan_writes_no_qdq(planted, tmp_path):
    path, ranges, holdout = planted
    plan = plan_precision(path, ranges, holdout, Gate(min_logits_sqnr_db=30))
    plan.layers = dict.fromkeys(plan.layers, "fp32")
    assert write_mixed_model(path, plan, ranges, tmp_path / "fp32.onnx") is None
    assert count_qdq(onnx.load(tmp_path / "fp32.onnx"))["QuantizeLinear"] == 0


@pytest.mark.parametrize("high_precision", ["fp32", "fp16"])
def test_int8_model_can_leave_named_layers_in_high_precision(planted, tmp_path, high_precision):
    path, ranges, _ = planted

    def fc_reads_dequantized(model_path: Path) -> bool:
        model = onnx.load(model_path)
        producers = {output: node.op_type for node in model.graph.node for output in node.output}
        fc = next(node for node in model.graph.node if node.name == "fc")
        return any(producers.get(name) == "DequantizeLinear" for name in fc.input)

    everything = write_int8_model(path, ranges, tmp_path / "all.onnx", high_precision=high_precision)
    result = write_int8_model(path, ranges, tmp_path / "fc-float.onnx", high_precision=high_precision,
                              high_precision_layers=["fc"])  # fmt: skip
    assert set(everything.quantized_nodes) == {"conv1", "conv2", "fc"} and fc_reads_dequantized(tmp_path / "all.onnx")
    assert set(result.quantized_nodes) == {"conv1", "conv2"} and result.excluded_nodes == ["fc"]
    assert not fc_reads_dequantized(tmp_path / "fc-float.onnx")
    with pytest.raises(UserError, match="'relu1' is not a quantizable layer"):
        write_int8_model(path, ranges, tmp_path / "bad.onnx", high_precision_layers=["relu1"])
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize(
    ("gate", "kwargs", "message"),
    [
        (Gate(), {}, "gate is empty"),
        (Gate(max_top1_drop=5), {}, "not a fraction"),
        (Gate(max_top1_drop=0.05), {"high_precision": "bf16"}, "high precision 'bf16'"),
        (Gate(max_top1_drop=0.05), {"holdout_labels": np.zeros(3, np.int64)}, "held-out labels"),
        (Gate(max_top1_drop=0.0), {}, "cannot be certified"),
    ],
)
def test_bad_plan_arguments_raise_user_error(planted, gate, kwargs, message):
    path, ranges, holdout = planted
    with pytest.raises(UserError, match=message):
        plan_precision(path, ranges, holdout, gate, **kwargs)


def test_plan_for_another_model_is_refused(planted, tmp_path):
    path, ranges, holdout = planted
    plan = plan_precision(path, ranges, holdout, Gate(min_logits_sqnr_db=30))
    other = make_tiny_resnet(tmp_path / "other.onnx")
    with pytest.raises(UserError, match="made for another model"):
        write_mixed_model(other, plan, ranges, tmp_path / "mixed.onnx")
    assert not (tmp_path / "mixed.onnx").exists()
