import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from qdq_helpers import count_qdq
from tiny_onnx import make_tiny_resnet

from calibration.qdq import qdq_zero_point_violations
from engines.onnx_model import is_quantized


def _qdq_model(zero_point: np.ndarray | None, weight: np.ndarray | None = None) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> Add(weight DequantizeLinear) -> y."""
    weight = np.array([3], np.int8) if weight is None else weight
    initializers = [
        numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
        numpy_helper.from_array(weight, "w_quantized"),
    ]
    qdq_inputs = ["x", "scale"]
    if zero_point is not None:
        initializers.append(numpy_helper.from_array(zero_point, "zp"))
        qdq_inputs.append("zp")
    nodes = [
        helper.make_node("QuantizeLinear", qdq_inputs, ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", *qdq_inputs[1:]], ["xd"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["w_quantized", "scale"], ["w"], name="w_dq"),
        helper.make_node("Add", ["xd", "w"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_symmetric_int8_model_has_no_violations():
    model = _qdq_model(np.array(0, np.int8))
    onnx.checker.check_model(model, full_check=True)
    assert qdq_zero_point_violations(model) == []
    assert count_qdq(model) == {"QuantizeLinear": 1, "DequantizeLinear": 2}
    assert is_quantized(model)


@pytest.mark.parametrize(
    ("zero_point", "weight", "violators"),
    [
        (np.array(3, np.int8), None, ["x_q", "x_dq"]),  # nonzero zero point
        (np.array(0, np.uint8), np.array([3], np.uint8), ["x_q", "x_dq", "w_dq"]),  # uint8 (asymmetric ORT default)
        (None, None, ["x_q"]),  # no zero point: QuantizeLinear outputs uint8
        (np.array(0, np.int8), np.array([3], np.int32), ["w_dq"]),  # int32 weight/bias: TensorRT cannot parse it
    ],
)
def test_violations_are_named(zero_point, weight, violators):
    assert qdq_zero_point_violations(_qdq_model(zero_point, weight)) == violators


def test_zero_point_that_is_not_a_constant_is_a_violation():
    model = _qdq_model(np.array(0, np.int8))
    del model.graph.initializer[2]  # "zp" becomes an unknown tensor
    assert qdq_zero_point_violations(model) == ["x_q", "x_dq"]


def test_fp32_model_is_not_quantized(tmp_path):
    model = onnx.load(make_tiny_resnet(tmp_path / "m.onnx"))
    assert not is_quantized(model)
    assert count_qdq(model) == {"QuantizeLinear": 0, "DequantizeLinear": 0}
    assert qdq_zero_point_violations(model) == []


def test_qoperator_model_is_quantized():
    node = helper.make_node("QLinearConv", list("abcdefgh"), ["y"])
    graph = helper.make_graph([node], "q", [], [])
    assert is_quantized(helper.make_model(graph))
