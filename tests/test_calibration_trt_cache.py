import json
from dataclasses import replace

import numpy as np
import pytest
from tiny_onnx import make_tiny_resnet, random_images

from calibration.ranges import calibrate_ranges
from engines.errors import UserError
from engines.trt_cache import (
    CacheHeader,
    cache_trt_version,
    hex_to_scale,
    load_model_calibration_cache,
    read_calibration_cache,
    scale_to_hex,
    sidecar_path,
    trt_version_number,
    write_calibration_cache,
    write_model_calibration_cache,
)


def test_scale_hex_is_big_endian_float32_bits():
    assert scale_to_hex(1 / 127) == "3c010204"  # docs/TENSORRT.md section 3: amax 1.0
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(2.0) == "40000000"
    assert hex_to_scale("3c010204") == np.float32(1 / 127)
    assert hex_to_scale("0") == 0.0


def test_write_is_byte_exact(tmp_path):
    path = write_calibration_cache(tmp_path / "calib.cache", {"images": 1 / 127, "conv1/out:0": 2.0})
    assert path.read_bytes() == b"TRT-100300-EntropyCalibration2\nimages: 3c010204\nconv1/out:0: 40000000\n"
    write_calibration_cache(tmp_path / "mm.cache", {"x": 1.0}, trt_version=100800, algorithm="MinMaxCalibration")
    assert (tmp_path / "mm.cache").read_text() == "TRT-100800-MinMaxCalibration\nx: 3f800000\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.cache", "mm.cache"]  # no temp files left


def test_round_trip_keeps_float32_scales(tmp_path):
    scales = {f"tensor_{i}": float(s) for i, s in enumerate(np.random.default_rng(0).uniform(1e-4, 10, 50))}
    scales["name: with colon"] = 0.5
    write_calibration_cache(tmp_path / "c.cache", scales, trt_version=8601, algorithm="EntropyCalibration2")
    header, read = read_calibration_cache(tmp_path / "c.cache")
    assert header == CacheHeader(8601, "EntropyCalibration2")
    assert header.line == "TRT-8601-EntropyCalibration2"
    assert list(read) == list(scales)
    for name, scale in scales.items():
        assert read[name] == np.float32(scale), name


def test_reads_tensorrt_written_cache(tmp_path):
    # As TensorRT 7.2 wrote it for its MNIST sample (one line per tensor, unpadded lowercase hex).
    (tmp_path / "mnist.cache").write_text("TRT-7202-EntropyCalibration2\ndata: 3c008912\nconv1: 3c60dd38\n")
    header, scales = read_calibration_cache(tmp_path / "mnist.cache")
    assert header == CacheHeader(7202, "EntropyCalibration2")
    assert scales["data"] == pytest.approx(0.0078453, rel=1e-4)
    assert set(scales) == {"data", "conv1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "first line"),
        ("images: 3c010204\n", "first line"),
        ("TRT-100300-EntropyCalibration2\nimages 3c010204\n", ":2: not"),
        ("TRT-100300-EntropyCalibration2\nimages: xyz\n", ":2: not"),
    ],
)
def test_damaged_cache_raises_user_error(tmp_path, text, message):
    (tmp_path / "bad.cache").write_text(text)
    with pytest.raises(UserError, match=message):
        read_calibration_cache(tmp_path / "bad.cache")


def test_missing_cache_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="no such calibration cache"):
        read_calibration_cache(tmp_path / "none.cache")


@pytest.mark.parametrize(
    ("scales", "algorithm"),
    [
        ({"x": float("nan")}, "EntropyCalibration2"),
        ({"x": -1.0}, "EntropyCalibration2"),
        ({"a\nb": 1.0}, "EntropyCalibration2"),
        ({"x": 1.0}, "Percentile"),
    ],
)
def test_write_rejects_what_tensorrt_could_not_read(tmp_path, scales, algorithm):
    with pytest.raises(ValueError):
        write_calibration_cache(tmp_path / "c.cache", scales, algorithm=algorithm)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("version", "number"), [("10.3.0", 100300), ("10.13.2.6", 101302), ("8.6.1", 8601), ("11.4", 110400)]
)
def test_trt_version_number(version, number):
    assert trt_version_number(version) == number


def test_trt_version_number_rejects_garbage():
    with pytest.raises(ValueError):
        trt_version_number("ten")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    model = make_tiny_resnet(tmp_path_factory.mktemp("model") / "model.onnx")
    return model, calibrate_ranges(model, random_images(32), "entropy", batch_size=16)


def test_model_cache_holds_amax_over_127_under_onnx_names(calibrated, tmp_path):
    model, ranges = calibrated
    path = write_model_calibration_cache(tmp_path / "model.cache", ranges, trt_version=100300)
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    # graph input first, then every node output, in graph order: the names TensorRT's ONNX parser gives them
    assert [line.split(": ")[0] for line in lines[1:]] == [
        "images", "x_scaled", "x_norm", "c1", "r1", "c2", "res", "r2", "pooled", "flat", "logits"
    ]  # fmt: skip
    header, scales = load_model_calibration_cache(path, model)
    assert header == CacheHeader(100300, "EntropyCalibration2")
    for name, amax in ranges.amax.items():
        assert scales[name] == np.float32(amax) / np.float32(127), name
        assert f"{name}: {scale_to_hex(float(np.float32(amax) / np.float32(127)))}" in lines
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["model_sha256"] == ranges.model_sha256 and sidecar["method"] == "entropy"


def test_stale_cache_is_refused(calibrated, tmp_path):
    model, ranges = calibrated
    path = write_model_calibration_cache(tmp_path / "model.cache", ranges)
    retrained = make_tiny_resnet(tmp_path / "retrained.onnx", seed=5)
    with pytest.raises(UserError, match="stale calibration cache"):
        load_model_calibration_cache(path, retrained)


def test_edited_or_orphan_cache_is_refused(calibrated, tmp_path):
    model, ranges = calibrated
    path = write_model_calibration_cache(tmp_path / "model.cache", ranges)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "images: 3f800000", *lines[2:]]) + "\n")  # a hand-edited scale
    with pytest.raises(UserError, match="changed since it was written"):
        load_model_calibration_cache(path, model)
    sidecar_path(path).unlink()
    with pytest.raises(UserError, match="nothing says which model"):
        load_model_calibration_cache(path, model)


@pytest.mark.parametrize(("version", "number"), [("10.3", 100300), ("10.13.0", 101300), ("8.6.1", 8601)])
def test_cache_version_is_the_devices_tensorrt(version, number):
    assert cache_trt_version(version) == number


@pytest.mark.parametrize(("version", "message"), [("11.4", "no calibration cache"), ("7.2", "older"),
                                                  ("ten", "not MAJOR.MINOR")])  # fmt: skip
def test_cache_version_refuses_what_has_no_cache(version, message):
    with pytest.raises(UserError, match=message):
        cache_trt_version(version)


def test_zero_amax_tensors_are_left_out_of_the_cache(calibrated, tmp_path):
    model, ranges = calibrated
    zeroed = replace(ranges, amax={**ranges.amax, "c1": 0.0})
    write_model_calibration_cache(tmp_path / "c.cache", zeroed, trt_version=101300)
    header, scales = load_model_calibration_cache(tmp_path / "c.cache", model)
    assert header.line == "TRT-101300-EntropyCalibration2"
    assert "c1" not in scales and set(scales) == set(ranges.amax) - {"c1"}
