"""The demo goes on when FP16 cannot hold a model: the refusal is reported, FP32 takes FP16's place.

A barely trained MimicNorm MobileNetV2 has activations beyond FP16's range (nothing normalizes them
but the logits BN); here a tiny ONNX model whose first conv is scaled past 65504 stands in for it,
run through the demo's own TensorRT and gated-plan steps, then through `report`.
"""

import json

import numpy as np
import onnx
import pytest
from synthetic_runs import write_run
from tiny_onnx import make_tiny_resnet, random_images

from calibration.fp16 import FP16_MAX
from engines.artifacts import save_image_set
from mimicnorm_deploy.cli import main
from mimicnorm_deploy.layout import FP16_VARIANT, PLAN_VARIANT, TENSORRT_VARIANT, VARIANTS, RunLayout
from mimicnorm_deploy.pipeline import MIN_RANGE_IMAGES, gated_plan, tensorrt_artifacts

CALIBRATION_IMAGES = 300 + MIN_RANGE_IMAGES  # the one-point gate holds out 300


def image_set(path, model, n: int, seed: int):
    """uint8 images labelled with the FP32 model's own top-1 (FP32 accuracy 100 %)."""
    import onnxruntime as ort

    pixels = (random_images(n, seed=seed) * 255).round().astype(np.uint8)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"images": pixels.astype(np.float32) / 255})[0].argmax(axis=1)
    return save_image_set(path, pixels, labels, 1 / 255)


@pytest.fixture(scope="module")
def overflowing_run(tmp_path_factory):
    """A run whose MimicNorm model overflows FP16, after the demo's TensorRT steps (the rest of the
    run, train reports and benches, is synthetic)."""
    layout = RunLayout(write_run(tmp_path_factory.mktemp("run"), variants=VARIANTS, with_model_files=True))
    model = make_tiny_resnet(layout.onnx("mimic"), channel_scales=np.array([1.0, 1.0, 1.0, 4 * FP16_MAX]))
    layout.data_dir.mkdir()
    image_set(layout.calibration_set, model, CALIBRATION_IMAGES, seed=1)
    image_set(layout.test_set, model, 200, seed=2)
    messages = []
    tensorrt_artifacts(layout, "mimic", messages.append)
    gated_plan(layout, "mimic", layout.test_set, messages.append, CALIBRATION_IMAGES)
    return layout, messages


def test_fp16_products_are_refused_by_tensor_and_fp32_takes_their_place(overflowing_run):
    layout, messages = overflowing_run
    refused = json.loads(layout.fp16_refusals("mimic").read_text())["refused"]
    assert [r["product"] for r in refused] == [f"model.{FP16_VARIANT}.onnx", f"model.{TENSORRT_VARIANT}.onnx"]
    tensor_names = {out for node in onnx.load(str(layout.onnx("mimic"))).graph.node for out in node.output}
    for refusal in refused:
        largest = refusal["largest"][0]
        assert largest["tensor"] in tensor_names and largest["max_abs"] > FP16_MAX
        assert refusal["tensors_over_fp16"] >= 1 and f"{largest['tensor']!r}" in refusal["reason"]
    assert any("FP16 refused" in m and refused[0]["largest"][0]["tensor"] in m for m in messages)
    # No pure FP16 model; the Q/DQ model and the cache are there, with FP32 around the INT8 layers.
    assert not layout.onnx("mimic", FP16_VARIANT).exists()
    assert layout.tensorrt_cache("mimic").read_text().startswith("TRT-")
    record = json.loads(layout.calibration_record("mimic", TENSORRT_VARIANT).read_text())
    assert record["high_precision"] == "fp32" and "fp16" not in record
    qdq = onnx.load(str(layout.onnx("mimic", TENSORRT_VARIANT)))
    assert onnx.TensorProto.FLOAT16 not in {t.data_type for t in qdq.graph.initializer}
    # The gated plan moves layers to FP32 instead of FP16, and still passes its gate.
    plan = json.loads(layout.calibration_record("mimic", PLAN_VARIANT).read_text())["plan"]
    assert plan["high_precision"] == "fp32" and plan["result"]["passed"]
    assert set(plan["layers"].values()) <= {"int8", "fp32"}


def test_the_report_says_which_product_which_tensor_and_how_large(overflowing_run):
    layout, _ = overflowing_run
    assert main(["report", str(layout.root)]) == 0
    report = json.loads((layout.report_dir / "report.json").read_text())
    refusals = report["fp16_refusals"]
    assert {(r["norm"], r["product"]) for r in refusals} == {("mimic", f"model.{FP16_VARIANT}.onnx"),
                                                             ("mimic", f"model.{TENSORRT_VARIANT}.onnx")}  # fmt: skip
    tensor = refusals[0]["largest"][0]["tensor"]
    markdown = (layout.report_dir / "report.md").read_text()
    assert "FP16 products refused" in markdown and f"'{tensor}' (|x| up to" in markdown
    assert "written with FP32 around the INT8 layers" in markdown
    page = (layout.report_dir / "report.html").read_text()
    assert "FP16 products refused" in page and tensor in page
    # The artifacts list no FP16 model for MimicNorm, and says its Q/DQ model keeps FP32 around INT8.
    mimic = [a for a in report["tensorrt_artifacts"] if a["norm"] == "mimic"]
    assert "fp16" not in {a["variant"] for a in mimic}
    assert "FP32 around INT8" in next(a["what"] for a in mimic if a["variant"] == TENSORRT_VARIANT)
