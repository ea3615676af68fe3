"""The calibrate stage (torch-free): every product of one run, written all together or not at all."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from qdq_helpers import count_qdq
from tiny_onnx import make_tiny_mobilenet, make_tiny_resnet, random_images

from calibration.fp16 import FP16_MAX
from calibration.qdq import qdq_zero_point_violations, tensorrt_placement_violations
from calibration.ranges import ActivationRanges, images_sha256
from engines.artifacts import load_image_set, save_image_set
from engines.errors import UserError
from engines.precision_plan import PrecisionPlan
from engines.trt_cache import load_model_calibration_cache
from mimicnorm_deploy.stages import CalibrateOptions, calibrate_stage

N_IMAGES = 96


def image_set(path: Path, model: Path, n: int = N_IMAGES, seed: int = 1) -> Path:
    """uint8 images with the FP32 model's own top-1 as labels (so FP32 accuracy is 100 %)."""
    import onnxruntime as ort

    pixels = (random_images(n, seed=seed) * 255).round().astype(np.uint8)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"images": pixels.astype(np.float32) / 255})[0].argmax(axis=1)
    return save_image_set(path, pixels, labels, 1 / 255)


@pytest.fixture
def workdir(tmp_path) -> tuple[Path, Path, Path]:
    model = make_tiny_resnet(tmp_path / "model.onnx")
    return tmp_path, model, image_set(tmp_path / "calib.npz", model)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_ungated_run_writes_model_record_report_and_ranges(workdir):
    tmp, model, calib = workdir
    out = tmp / "model.int8.onnx"
    messages = []
    record = calibrate_stage(model, calib, out, CalibrateOptions(per_channel=True), progress=messages.append)
    products = ["model.int8.json", "model.int8.onnx", "model.int8.quality.md", "model.int8.quality.png",
                "model.int8.ranges.json"]  # fmt: skip
    assert listing(tmp) == sorted(["calib.npz", "manifest.json", "model.onnx", *products])  # no staging leftovers
    manifest = json.loads((tmp / "manifest.json").read_text())["artifacts"]
    assert all(manifest[name]["stage"] == "calibrate" for name in products)
    assert record["plan"] is None and record["holdout_images"] == 0 and record["calibration_images"] == N_IMAGES
    assert any(m.startswith("calibration batch") for m in messages)
    quality = record["quality"]
    assert quality["kernels"] == "onnxruntime" and quality["image_set"] == "the calibration images themselves"
    assert quality["accuracy_fp32"] == 1.0 and 0.5 < quality["accuracy"] <= 1.0 and quality["kernel_accuracy"] > 0.5
    assert [layer["node"] for layer in quality["layers"]] == ["conv1", "conv2", "residual_add", "fc"]
    assert (tmp / "model.int8.quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ranges = ActivationRanges.load(tmp / "model.int8.ranges.json")
    ranges.require_model(model)
    assert ranges.num_images == N_IMAGES


def test_gated_tensorrt_run_holds_out_the_last_quarter(workdir):
    tmp, model, calib = workdir
    out = tmp / "model.mixed.onnx"
    eval_set = image_set(tmp / "eval.npz", model, n=64, seed=7)
    options = CalibrateOptions(target="desktop-gpu", min_logits_sqnr_db=20.0, trt_cache=str(tmp / "model.calib"),
                               fp16=str(tmp / "model.fp16.onnx"), eval_set=str(eval_set))  # fmt: skip
    record = calibrate_stage(model, calib, out, options)

    holdout = N_IMAGES // 4
    images, _ = load_image_set(calib)
    plan = PrecisionPlan.load(tmp / "model.mixed.plan.json")
    assert plan.holdout_sha256 == images_sha256(images[-holdout:])  # the gate saw only the held-out images
    assert plan.calibration_sha256 == images_sha256(images[:-holdout])  # and the ranges only the others
    assert plan.high_precision == "fp16" and plan.placement == "tensorrt" and plan.result.passed
    assert record["holdout_images"] == holdout and record["calibration_images"] == N_IMAGES - holdout
    assert record["quality"]["image_set"] == "eval.npz" and record["quality"]["images"] == 64
    assert record["quality"]["kernels"] is None  # TensorRT does not run here: no kernel figures claimed
    written = onnx.load(str(out))
    assert qdq_zero_point_violations(written) == [] and tensorrt_placement_violations(written) == []
    # every artifact TensorRT 10 and 11 need, from the same ranges
    header, scales = load_model_calibration_cache(tmp / "model.calib", model)
    assert header.line == "TRT-101300-EntropyCalibration2" and scales  # desktop-gpu's first TensorRT: 10.13
    assert record["trt_cache_version"] == 101300
    fp16 = onnx.load(str(tmp / "model.fp16.onnx"))
    assert count_qdq(fp16)["QuantizeLinear"] == 0
    assert {i.data_type for i in fp16.graph.initializer} == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CalibrateOptions(min_logits_sqnr_db=500.0, target="desktop-gpu"), "no precision plan passes the gate"),
        (CalibrateOptions(max_top1_drop=0.01, holdout=0), "pass --holdout N"),
        (CalibrateOptions(max_top1_drop=0.05, holdout=32), "gate of 5.00 points needs at least 60 held-out images"),
        (CalibrateOptions(max_top1_drop=0.05), "needs at least 60 held-out images"),  # more than half the set
        (CalibrateOptions(holdout=N_IMAGES), "leaves no calibration images"),
        (CalibrateOptions(batch_size=N_IMAGES + 1), "fewer than one batch"),
        (CalibrateOptions(target="jetson-nano"), "unknown target 'jetson-nano'"),
        (CalibrateOptions(trt_cache="elsewhere/model.calib"), "same directory"),
    ],
)
def test_bad_options_raise_user_error_and_write_nothing(workdir, options, message):
    tmp, model, calib = workdir
    before = listing(tmp)
    with pytest.raises(UserError, match=message):
        calibrate_stage(model, calib, tmp / "q.onnx", options)
    assert listing(tmp) == before


def test_fp16_overflow_found_after_the_int8_model_leaves_nothing(tmp_path):
    # conv1's weights beyond FP16's range (conv2 divides them back): INT8 is fine, FP16 is not
    model = make_tiny_resnet(tmp_path / "model.onnx", channel_scales=np.array([1.0, 1.0, 1.0, 4 * FP16_MAX]))
    calib = image_set(tmp_path / "calib.npz", model)
    before = listing(tmp_path)
    with pytest.raises(UserError, match="FP16 cannot hold"):
        calibrate_stage(model, calib, tmp_path / "q.onnx", CalibrateOptions(fp16=str(tmp_path / "q.fp16.onnx")))
    assert listing(tmp_path) == before


def test_cli_gated_calibration_prints_the_plan_and_the_report(workdir, capsys):
    from mimicnorm_deploy.cli import main

    tmp, model, calib = workdir
    out = tmp / "model.mixed.onnx"
    assert main(["calibrate", str(model), "--calib", str(calib), "--out", str(out), "--target", "desktop-gpu",
                 "--max-top1-drop", "5", "--holdout", "64", "--high-precision", "fp32", "--fp16",
                 str(tmp / "model.fp16.onnx"), "--fp16-io", "fp16"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "plan: " in printed and "gate on 64 held-out images" in printed and "pure FP16 model" in printed
    plan = PrecisionPlan.load(tmp / "model.mixed.plan.json")
    assert plan.gate.max_top1_drop == pytest.approx(0.05) and plan.high_precision == "fp32"
    fp16 = onnx.load(str(tmp / "model.fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16  # --fp16-io fp16

    assert main(["calibrate", str(model), "--calib", str(calib), "--out", str(tmp / "x.onnx"),
                 "--min-logits-sqnr", "500", "--target", "desktop-gpu"]) == 2  # fmt: skip
    stderr = capsys.readouterr().err.strip().splitlines()  # progress lines, then the one error line
    assert [line for line in stderr if line.startswith("error: ")] == stderr[-1:]
    assert stderr[-1].startswith("error: no precision plan passes the gate") and "relax the gate" in stderr[-1]
    assert not any(p.name.startswith("x.") for p in tmp.iterdir())


def test_cli_top1_drop_is_in_percentage_points(workdir, capsys):
    from mimicnorm_deploy.cli import main

    tmp, model, calib = workdir
    assert main(["calibrate", str(model), "--calib", str(calib), "--out", str(tmp / "q.onnx"),
                 "--max-top1-drop", "150"]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        "error: argument --max-top1-drop: 150 is not in [0, 100] percentage points (0.5 = half a point); "
        "see 'mimicnorm-deploy calibrate --help'"
    )
    assert not (tmp / "q.onnx").exists()


def test_equalize_writes_the_equalized_model_first_and_calibrates_it(tmp_path):
    # A depthwise conv with a BN-folding-like 100x channel spread, quantized per tensor.
    scales = np.array([100.0, 0.05, 1.0, 3.0, 0.2, 1.0, 40.0, 1.0])
    model = make_tiny_mobilenet(tmp_path / "model.onnx", channel_scales=scales)
    calib = image_set(tmp_path / "calib.npz", model)
    plain = calibrate_stage(model, calib, tmp_path / "plain.onnx", CalibrateOptions(target="desktop-gpu"))
    record = calibrate_stage(model, calib, tmp_path / "cle.onnx", CalibrateOptions(target="desktop-gpu", equalize=True))
    assert (tmp_path / "cle.equalized.onnx").is_file() and record["model"] == str(tmp_path / "cle.equalized.onnx")
    manifest = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    assert manifest["cle.equalized.onnx"]["stage"] == "equalize"
    assert [(p["first"], p["second"]) for p in record["equalization"]["pairs"]] == [("expand", "dw"), ("dw", "project")]
    assert plain["equalization"] is None
    assert record["worst_weight_spread"]["spread"] < plain["worst_weight_spread"]["spread"] / 5
    assert record["quality"]["logits_sqnr_db"] > plain["quality"]["logits_sqnr_db"] + 6


def test_top1_gate_holds_out_the_images_it_needs(workdir):
    tmp, model, calib = workdir
    record = calibrate_stage(model, calib, tmp / "q.onnx", CalibrateOptions(max_top1_drop=0.07))
    assert record["holdout_images"] == 43  # ceil(3 / 0.07), more than the default quarter (24)
    assert record["plan"]["holdout_images"] == 43 and record["plan"]["gate_resolution"] == pytest.approx(3 / 43)


@pytest.mark.parametrize(("high_precision", "float_type"), [(None, onnx.TensorProto.FLOAT16),
                                                            ("fp32", onnx.TensorProto.FLOAT)])  # fmt: skip
def test_tensorrt_int8_model_is_fp16_outside_int8_unless_asked(workdir, high_precision, float_type):
    tmp, model, calib = workdir
    out = tmp / "q.onnx"
    options = CalibrateOptions(target="jetson-orin-nx", high_precision=high_precision)
    record = calibrate_stage(model, calib, out, options)
    written = onnx.load(str(out))
    assert record["high_precision"] == ("fp16" if high_precision is None else "fp32")
    assert qdq_zero_point_violations(written) == [] and tensorrt_placement_violations(written) == []
    # the float rest of the graph (biases, Q/DQ scales) in the high precision type; inputs and outputs FP32
    floats = {i.data_type for i in written.graph.initializer} - {onnx.TensorProto.INT8}
    assert floats == {float_type}
    assert written.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert written.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert record["quality"]["top1_agreement"] > 0.9


def test_cache_version_follows_the_target_or_trt_version(workdir):
    tmp, model, calib = workdir
    options = CalibrateOptions(target="jetson-orin-nano", trt_cache=str(tmp / "j.calib"))
    calibrate_stage(model, calib, tmp / "j.onnx", options)
    assert (tmp / "j.calib").read_text().startswith("TRT-100300-")  # JetPack 6's TensorRT 10.3
    options = CalibrateOptions(target="jetson-orin-nano", trt_cache=str(tmp / "k.calib"), trt_version="10.13")
    calibrate_stage(model, calib, tmp / "k.onnx", options)
    assert (tmp / "k.calib").read_text().startswith("TRT-101300-")
    before = listing(tmp)
    with pytest.raises(UserError, match="pass --trt-version"):  # the cpu target runs no TensorRT
        calibrate_stage(model, calib, tmp / "c.onnx", CalibrateOptions(trt_cache=str(tmp / "c.calib")))
    with pytest.raises(UserError, match="reads no calibration cache"):
        calibrate_stage(model, calib, tmp / "c.onnx", CalibrateOptions(target="desktop-gpu", trt_version="11.4",
                                                                       trt_cache=str(tmp / "c.calib")))  # fmt: skip
    assert listing(tmp) == before
