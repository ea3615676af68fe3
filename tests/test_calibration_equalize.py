"""Cross-layer equalization on tiny ONNX graphs: exact in FP32, equal ranges, ReLU6 left alone."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from tiny_onnx import make_tiny_mobilenet, make_tiny_resnet, random_images

from calibration.equalize import (
    equalize_model,
    input_channel_ranges,
    output_channel_ranges,
    scale_input_channels,
    write_equalized_model,
)
from calibration.metrics import sqnr_db, weight_range_spread
from engines.errors import UserError

PLANTED = np.array([100.0, 0.05, 1.0, 3.0, 0.2, 1.0, 40.0, 1.0])


def run(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_grouped_input_channel_ranges_match_a_direct_loop():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 2, 3, 3))  # 3 groups of 2 input and 2 output channels
    expected = [max(np.abs(weight[o, i % 2]).max() for o in range(6) if o // 2 == i // 2) for i in range(6)]
    np.testing.assert_allclose(input_channel_ranges(weight, groups=3), expected)
    scaled = scale_input_channels(weight, 3, np.arange(1.0, 7.0))
    for o in range(6):
        for j in range(2):
            np.testing.assert_allclose(scaled[o, j], weight[o, j] * (o // 2 * 2 + j + 1))


def test_equalization_is_exact_and_evens_out_a_folded_depthwise_conv(tmp_path):
    model = onnx.load(make_tiny_mobilenet(tmp_path / "m.onnx", channel_scales=PLANTED))
    equalized, result = equalize_model(model)
    # expand -> dw and dw -> project; the stem's Relu also feeds the residual Add, so it stays.
    assert [(p.first, p.second) for p in result.pairs] == [("expand", "dw"), ("dw", "project")]
    assert result.skipped == []
    images = random_images(16, size=8)
    reference, got = run(model, images), run(equalized, images)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
    w = weights(equalized)
    # At convergence each pair's shared channels have the same range on both sides.
    np.testing.assert_allclose(output_channel_ranges(w["expand.weight"]), input_channel_ranges(w["dw.weight"], 8),
                               rtol=1e-3)  # fmt: skip
    np.testing.assert_allclose(output_channel_ranges(w["dw.weight"]), input_channel_ranges(w["project.weight"], 1),
                               rtol=1e-3)  # fmt: skip
    spread = {s.name: s.spread for s in weight_range_spread(model)}
    spread_after = {s.name: s.spread for s in weight_range_spread(equalized)}
    assert spread["dw.weight"] > 30 and spread_after["dw.weight"] < 0.1 * spread["dw.weight"]
    assert weights(model)["stem.weight"].tobytes() == w["stem.weight"].tobytes()  # untouched
    assert result.pairs[1].first_spread_after < result.pairs[1].first_spread_before


def test_equalization_helps_per_tensor_weights(tmp_path):
    # The quantity CLE is for: per-tensor INT8 weights of the folded depthwise conv, before and after.
    model = onnx.load(make_tiny_mobilenet(tmp_path / "m.onnx", channel_scales=PLANTED))
    equalized, _ = equalize_model(model)

    def per_tensor_weight_sqnr(m: onnx.ModelProto) -> float:
        w = weights(m)["dw.weight"]
        scale = np.abs(w).max() / 127
        return sqnr_db(w, np.round(w / scale) * scale)

    # Each channel's own error matters (a channel 100x smaller than the largest is noise per tensor).
    def worst_channel_sqnr(m: onnx.ModelProto) -> float:
        w = weights(m)["dw.weight"]
        scale = np.abs(w).max() / 127
        return min(sqnr_db(w[c], np.round(w[c] / scale) * scale) for c in range(w.shape[0]))

    assert worst_channel_sqnr(model) < 15
    assert worst_channel_sqnr(equalized) > worst_channel_sqnr(model) + 20
    assert per_tensor_weight_sqnr(equalized) > 30


def test_relu6_and_shared_activations_are_left_alone(tmp_path):
    model = onnx.load(make_tiny_mobilenet(tmp_path / "m.onnx", channel_scales=PLANTED, relu6=True))
    equalized, result = equalize_model(model)
    assert result.pairs == []
    assert len(result.skipped) == 2 and all("ReLU6" in reason for reason in result.skipped)
    pairs = zip(model.graph.initializer, equalized.graph.initializer, strict=True)
    assert all(a.raw_data == b.raw_data for a, b in pairs)
    # The tiny ResNet's only conv -> Relu -> conv chain shares the Relu with the residual Add.
    resnet = onnx.load(make_tiny_resnet(tmp_path / "r.onnx", channel_scales=np.array([100.0, 1, 1, 1])))
    assert equalize_model(resnet)[1].pairs == []


def test_write_equalized_model_checks_its_input(tmp_path):
    out = tmp_path / "eq.onnx"
    result = write_equalized_model(make_tiny_mobilenet(tmp_path / "m.onnx", channel_scales=PLANTED), out)
    assert out.is_file() and result.output_path == str(out) and len(result.pairs) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not an ONNX model"):
        write_equalized_model(tmp_path / "junk.onnx", tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()


def test_bias_absorption_is_exact_on_its_images_and_narrows_the_relu_it_shifts(tmp_path):
    from calibration.equalize import absorb_biases, channel_minima

    model = onnx.load(make_tiny_mobilenet(tmp_path / "m.onnx", channel_scales=PLANTED))
    dw_bias = next(init for init in model.graph.initializer if init.name == "dw.bias")
    lifted = numpy_helper.to_array(dw_bias) + np.array([0, 0, 1.0, 12.0, 0, 0, 0, 0], np.float32)
    dw_bias.CopyFrom(numpy_helper.from_array(lifted, "dw.bias"))  # channels 2 and 3 now always on, like 0
    images = random_images(32, size=8)
    dw_out = next(node for node in model.graph.node if node.name == "dw").output[0]
    before = channel_minima(model, [dw_out], images)[dw_out]
    assert before[0] > 0 and before[2] > 0 and before[3] > 0 and (before <= 0).sum() >= 3

    absorbed_model, absorbed = absorb_biases(model, images)
    # dw -> project only: the expand -> dw pair's second conv is zero-padded.
    assert [(a.first, a.second) for a in absorbed] == [("dw", "project")]
    assert absorbed[0].channels_shifted == int((before > 0).sum())
    assert absorbed[0].largest_shift == pytest.approx(float(before.max()), rel=1e-6)
    reference, got = run(model, images), run(absorbed_model, images)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
    after = channel_minima(absorbed_model, [dw_out], images)[dw_out]
    np.testing.assert_allclose(after, np.minimum(before, 0), atol=1e-4 * np.abs(before).max())


def test_bias_absorption_is_not_exact_on_images_that_go_below_the_shift(tmp_path):
    from calibration.equalize import absorb_biases

    model = onnx.load(make_tiny_mobilenet(tmp_path / "m.onnx", channel_scales=PLANTED))
    dw_bias = next(init for init in model.graph.initializer if init.name == "dw.bias")
    dw_bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(dw_bias) + np.float32(2.0), "dw.bias"))
    calibration_images = random_images(8, size=8) * 0.1  # dim images: the shifts fit them only
    absorbed_model, absorbed = absorb_biases(model, calibration_images)
    assert absorbed[0].channels_shifted > 0
    bright = random_images(8, size=8, seed=2) * 4.0
    assert np.abs(run(absorbed_model, bright) - run(model, bright)).max() > 1e-3
