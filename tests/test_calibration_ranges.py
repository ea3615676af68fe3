import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
from tiny_onnx import make_tiny_resnet, random_images

from calibration.data import ArrayCalibrationReader
from calibration.ranges import ActivationRanges, calibrate_ranges, images_sha256, pixel_tensors
from engines.errors import UserError

TINY_TENSORS = {"images", "x_scaled", "x_norm", "c1", "r1", "c2", "res", "r2", "pooled", "flat", "logits"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_resnet(tmp_path_factory.mktemp("tiny") / "model.onnx")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return random_images(64)


def identity_conv(path: Path, size: int) -> Path:
    """images -> 1x1 Conv with weight 1 -> y: calibration sees the images' own distribution twice."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"], name="conv")],
        "identity",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, size, size])],
        [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def all_tensors(model_path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    model = onnx.load(model_path)
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        for node in model.graph.node
        for name in node.output
        if name not in outputs
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {"images": images, **dict(zip(names, session.run(None, {"images": images}), strict=True))}


def heavy_tailed_images() -> np.ndarray:
    # Laplace(0, 1) with two rare large outliers, as 100 images of 100 x 100.
    values = np.random.default_rng(0).laplace(0, 1, 1_000_000)
    values[[123, 456_789]] = [-40.0, 40.0]
    return values.astype(np.float32).reshape(100, 1, 100, 100)


def test_minmax_amax_is_max_abs_of_every_tensor(tiny, images):
    ranges = calibrate_ranges(tiny, images, "minmax", batch_size=16)
    assert set(ranges.amax) == TINY_TENSORS  # graph input and every node output, by their ONNX names
    for name, values in all_tensors(tiny, images).items():
        assert ranges.amax[name] == pytest.approx(float(np.abs(values).max()), rel=1e-6), name
    assert ranges.max_abs == ranges.amax
    assert (ranges.method, ranges.percentile, ranges.num_images, ranges.batch_size) == ("minmax", None, 64, 16)
    assert ranges.calibration_sha256 == images_sha256(images)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_ranges_do_not_depend_on_batch_size(tiny, images, method):
    # 24 leaves a smaller last batch, which ORT's own histogram collector cannot take.
    amax = [calibrate_ranges(tiny, images, method, batch_size=b).amax for b in (1, 24, 64)]
    for name in TINY_TENSORS:
        np.testing.assert_allclose([a[name] for a in amax[1:]], amax[0][name], rtol=1e-6, err_msg=name)


def test_heavy_tailed_tensor_is_clipped_by_every_method_but_minmax(tmp_path):
    model, images = identity_conv(tmp_path / "id.onnx", 100), heavy_tailed_images()
    amax = {
        method: calibrate_ranges(model, images, method, batch_size=32, percentile=99.99).amax["y"]
        for method in ("minmax", "percentile", "mse", "entropy")
    }
    assert amax["minmax"] == 40.0
    assert 9.0 < amax["percentile"] < 10.0  # Laplace(0, 1): |x| exceeds -ln(1e-4) = 9.2 with probability 1e-4
    assert amax["entropy"] < 0.3 * 40
    assert amax["mse"] < 0.5 * 40


def test_uniform_tensor_keeps_about_the_max(tmp_path):
    model = identity_conv(tmp_path / "id.onnx", 100)
    images = np.random.default_rng(0).uniform(-1, 1, (20, 1, 100, 100)).astype(np.float32)
    ranges = calibrate_ranges(model, images, "entropy", batch_size=8)
    assert ranges.amax["y"] >= 0.98 * ranges.max_abs["y"]


def test_ort_entropy_calibrator_returns_minmax_ranges(tmp_path):
    # docs/BACKGROUND.md section 3: ORT 1.31's Entropy (as quantize_static runs it) does not clip at all.
    # Should this start failing, ORT's entropy has changed: re-check it before relying on it.
    model, images = identity_conv(tmp_path / "id.onnx", 100), heavy_tailed_images()
    with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram calibrators print progress
        calibrator = create_calibrator(
            model,
            augmented_model_path=str(tmp_path / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"symmetric": True},
        )
        calibrator.collect_data(ArrayCalibrationReader(images, "images", 20))
        ort_range = calibrator.compute_data()["y"].range_value
    assert float(np.max(np.abs(ort_range))) == pytest.approx(40.0)
    assert calibrate_ranges(model, images, "entropy", batch_size=20).amax["y"] < 12


def test_ort_percentile_calibrator_cannot_take_a_smaller_last_batch(tmp_path):
    # Why calibration.ranges collects its own histograms: ORT stacks all batches into one array.
    model = identity_conv(tmp_path / "id.onnx", 8)
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(
            model,
            augmented_model_path=str(tmp_path / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
        )
        with pytest.raises(ValueError, match="inhomogeneous"):
            calibrator.collect_data(ArrayCalibrationReader(random_images(10), "images", 4))
    assert calibrate_ranges(model, random_images(10), "percentile", batch_size=4).amax["y"] > 0


def test_progress_counts_batches_over_both_passes(tiny, images):
    calls = []
    calibrate_ranges(
        tiny, images, "percentile", batch_size=32, progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    calls.clear()
    calibrate_ranges(tiny, images, "minmax", batch_size=32, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]


def test_save_load_round_trip_and_stale_model(tiny, images, tmp_path):
    ranges = calibrate_ranges(tiny, images, "percentile", percentile=99.9)
    loaded = ActivationRanges.load(ranges.save(tmp_path / "ranges.json"))
    assert loaded == ranges
    loaded.require_model(tiny)
    other = make_tiny_resnet(tmp_path / "other.onnx", seed=1)
    with pytest.raises(UserError, match="calibrated on another model"):
        loaded.require_model(other)


@pytest.mark.parametrize(
    ("method", "percentile", "batch_size", "message"),
    [
        ("kl", 99.99, 32, "use one of: minmax, percentile, mse, entropy"),
        ("percentile", 0.0, 32, "outside"),
        ("percentile", 101.0, 32, "outside"),
        ("entropy", 99.99, 0, "batch size 0"),
        ("entropy", 99.99, 128, "fewer than one batch"),
    ],
)
def test_bad_arguments_raise_user_error(tiny, images, method, percentile, batch_size, message):
    with pytest.raises(UserError, match=message):
        calibrate_ranges(tiny, images, method, percentile=percentile, batch_size=batch_size)


def background_images(n: int = 64) -> np.ndarray:
    """Mostly one grey background (0.3) with 30 % bright pixels: a spike plus a tail, like Fashion-MNIST."""
    rng = np.random.default_rng(0)
    images = np.full((n, 1, 8, 8), 0.3, np.float32)
    bright = rng.random(images.shape) < 0.3
    images[bright] = rng.uniform(0.6, 1.0, bright.sum())
    return images


def test_pixel_tensors_are_the_input_and_its_normalization(tiny):
    assert pixel_tensors(onnx.load(tiny)) == ["images", "x_scaled", "x_norm"]


@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_input_pixels_are_never_clipped(tiny, method):
    ranges = calibrate_ranges(tiny, background_images(), method)
    assert ranges.unclipped_inputs == ["images", "x_scaled", "x_norm"]
    for name in ranges.unclipped_inputs:
        assert ranges.amax[name] == ranges.max_abs[name], name


def test_entropy_on_the_input_no_longer_settles_on_the_background(tiny):
    """Plain EntropyCalibration2 put the raw input's amax at the background spike (0.3), clipping every
    bright pixel; with point masses flattened (calibration.thresholds) it keeps them, and never goes
    below the background's |x| (0.4 after the 2x - 1 normalization)."""
    plain = calibrate_ranges(tiny, background_images(), "entropy", clip_input=True)
    assert plain.unclipped_inputs == []
    assert plain.amax["images"] > 0.9 * plain.max_abs["images"]
    assert plain.amax["x_norm"] > 0.4
    minmax = calibrate_ranges(tiny, background_images(), "minmax")
    assert minmax.unclipped_inputs == []  # nothing to spare: MinMax never clips
