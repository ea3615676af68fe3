import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_onnx import make_tiny_resnet

from calibration.metrics import accuracy, sqnr_db, top1_agreement, weight_range_spread, worst_spread


def test_sqnr_db_hand_computed():
    # signal 1+4+9+16 = 30, noise 1^2 = 1
    assert sqnr_db(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 5.0])) == pytest.approx(10 * math.log10(30))
    # noise 0.5^2 * 4 = 1, signal 4 * 4 = 16
    assert sqnr_db(np.full((2, 2), 2.0), np.full((2, 2), 2.5)) == pytest.approx(10 * math.log10(16))


def test_sqnr_db_edge_cases():
    x = np.array([[0.5, -1.0]], dtype=np.float32)
    assert sqnr_db(x, x.copy()) == math.inf
    assert sqnr_db(np.zeros(3), np.ones(3)) == -math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr_db(np.zeros(3), np.zeros(4))


def test_top1_agreement_hand_computed():
    reference = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 3.0], [5.0, 4.0, 0.0]])
    test = np.array([[0.9, 0.1, 0.0], [0.0, 1.0, 2.0], [0.1, 0.2, 3.0], [5.0, 4.5, 0.0]])
    assert top1_agreement(reference, test) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        top1_agreement(reference, test[:2])


def test_accuracy_hand_computed():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.0, 1.0]])
    labels = np.array([1, 0, 0, 0, 0])
    assert accuracy(logits, labels) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        accuracy(logits, labels[:3])


def _weighted_model() -> onnx.ModelProto:
    """Conv, Gemm (transB 0 and 1) and MatMul weights with hand-set max |w| per output channel, and
    an activation x activation MatMul that has no weight."""
    conv_w = np.array([4.0, -1.0, 2.0], np.float32).reshape(3, 1, 1, 1)  # ranges 4, 1, 2: median 2
    gemm_n = np.array([[1.0, -3.0, 0.1], [0.5, 0.0, 0.1], [0.0, 0.0, 0.0]], np.float32)  # columns: 1, 3, 0.1
    gemm_t = np.array([[1.0, 1.0, 1.0], [-8.0, 0.5, 0.0]], np.float32)  # transB=1, rows: 1, 8
    matmul = np.array([[10.0, 1.0, 1.0], [0.0, 0.0, 0.0]], np.float32)  # columns: 10, 1, 1
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gemm_n"], ["g1"], name="gemm_n"),
        helper.make_node("Gemm", ["g1", "gemm_t"], ["g2"], name="gemm_t", transB=1),
        helper.make_node("MatMul", ["g2", "matmul"], ["m"], name="matmul"),
        helper.make_node("Transpose", ["m"], ["m_t"], name="transpose"),
        helper.make_node("MatMul", ["m", "m_t"], ["y"], name="activation_matmul"),
    ]
    initializers = [
        numpy_helper.from_array(array, name)
        for name, array in [("conv_w", conv_w), ("gemm_n", gemm_n), ("gemm_t", gemm_t), ("matmul", matmul)]
    ]
    graph = helper.make_graph(
        nodes,
        "weighted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_weight_range_spread_per_op_type_and_axis():
    spreads = {s.name: s for s in weight_range_spread(_weighted_model())}
    assert set(spreads) == {"conv_w", "gemm_n", "gemm_t", "matmul"}  # the activation MatMul has no weight

    conv = spreads["conv_w"]
    assert (conv.op_type, conv.out_channels) == ("Conv", 3)
    assert (conv.max_channel_range, conv.median_channel_range, conv.spread) == pytest.approx((4.0, 2.0, 2.0))
    gemm_t = spreads["gemm_t"]
    assert (gemm_t.out_channels, gemm_t.max_channel_range, gemm_t.median_channel_range) == pytest.approx((2, 8.0, 4.5))
    gemm_n = spreads["gemm_n"]
    assert (gemm_n.out_channels, gemm_n.max_channel_range, gemm_n.median_channel_range) == pytest.approx((3, 3.0, 1.0))
    matmul = spreads["matmul"]
    assert (matmul.out_channels, matmul.spread) == pytest.approx((3, 10.0))

    assert worst_spread(list(spreads.values())).name == "matmul"
    with pytest.raises(ValueError):
        worst_spread([])


def test_planted_channel_scale_shows_as_spread(tmp_path):
    even = weight_range_spread(make_tiny_resnet(tmp_path / "even.onnx"))
    planted = weight_range_spread(
        str(make_tiny_resnet(tmp_path / "planted.onnx", channel_scales=np.array([100, 1, 1, 1])))
    )
    assert [s.name for s in planted] == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert max(s.spread for s in even) < 3
    conv1 = planted[0]
    # channel 0 is 100x the others; the median sits among the three unscaled channels
    assert 30 < conv1.spread < 300
    assert conv1.spread > 20 * even[0].spread
    assert worst_spread(planted) is conv1
