"""The per-model quality report: per-layer output SQNR, logits figures, Markdown and PNG."""

import math

import numpy as np
import pytest
from tiny_onnx import make_tiny_resnet, random_images

from calibration.quality import measure_quality, render_quality_markdown, render_quality_plot
from calibration.quantize import write_qdq_model
from calibration.ranges import calibrate_ranges


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    fp32 = make_tiny_resnet(tmp / "model.onnx")
    ranges = calibrate_ranges(fp32, random_images(64))
    # conv1 and conv2 kept in float: their outputs carry no quantization error, the layers after them do
    partial = write_qdq_model(fp32, ranges, tmp / "partial.onnx", nodes_to_exclude=["conv1", "conv2"]).output_path
    full = write_qdq_model(fp32, ranges, tmp / "full.onnx").output_path
    return fp32, partial, full


def test_per_layer_sqnr_follows_where_error_enters(models):
    fp32, partial, full = models
    images = random_images(300, seed=3)  # more than one evaluation batch
    precisions = {"conv1": "fp32", "conv2": "fp32", "residual_add": "int8", "fc": "int8"}
    quality = measure_quality(fp32, partial, images, None, image_set="random", precisions=precisions)
    by_node = {layer.node: layer for layer in quality.layers}
    assert list(by_node) == ["conv1", "conv2", "residual_add", "fc"]
    assert by_node["conv1"].output_sqnr_db == math.inf and by_node["conv1"].precision == "fp32"
    assert by_node["conv2"].output_sqnr_db == math.inf
    assert all(math.isfinite(by_node[n].output_sqnr_db) for n in ("residual_add", "fc"))
    assert by_node["conv1"].weight_spread > 1 and by_node["residual_add"].weight_spread is None
    assert quality.images == 300 and quality.accuracy is None and quality.kernels is None

    everything = measure_quality(fp32, full, images, None, image_set="random")  # all INT8 by default
    assert math.isfinite(everything.layers[0].output_sqnr_db)  # conv1 quantized now
    assert everything.logits_sqnr_db < quality.logits_sqnr_db  # more quantized layers, more noise


def test_labels_and_kernels_add_accuracy_figures(models):
    fp32, _, full = models
    images = random_images(100, seed=4)
    labels = np.random.default_rng(0).integers(0, 3, 100)
    quality = measure_quality(fp32, full, images, labels, image_set="random",
                              kernels="onnxruntime", sensitivity={"conv2": 12.5})  # fmt: skip
    assert 0 <= quality.accuracy <= 1 and 0 <= quality.accuracy_fp32 <= 1 and 0 <= quality.kernel_accuracy <= 1
    assert quality.kernel_top1_agreement > 0.5 and quality.kernel_logits_sqnr_db > 10
    assert [layer.sensitivity_sqnr_db for layer in quality.layers] == [None, 12.5, None, None]
    assert "| conv2 | Conv | int8 |" in render_quality_markdown(quality, "t")


def test_layer_sqnr_uses_the_first_images_and_the_logits_all_of_them(models, monkeypatch):
    import calibration.quality

    fp32, _, full = models
    images = random_images(300, seed=5)
    labels = np.random.default_rng(1).integers(0, 3, 300)
    first = measure_quality(fp32, full, images[:70], labels[:70], image_set="random", kernels="onnxruntime")
    every = measure_quality(fp32, full, images, labels, image_set="random", kernels="onnxruntime")  # 300 < 1024
    assert every.layer_images == 300
    monkeypatch.setattr(calibration.quality, "LAYER_SQNR_IMAGES", 70)
    seen = []
    quality = measure_quality(fp32, full, images, labels, image_set="random", kernels="onnxruntime",
                              progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert quality.images == 300 and quality.layer_images == 70
    # per layer: exactly the first 70 images' figures; at the logits: all 300 images'
    assert [layer.output_sqnr_db for layer in quality.layers] == [layer.output_sqnr_db for layer in first.layers]
    assert [layer.output_sqnr_db for layer in quality.layers] != [layer.output_sqnr_db for layer in every.layers]
    assert quality.accuracy == every.accuracy and quality.kernel_accuracy == every.kernel_accuracy
    assert quality.logits_sqnr_db == every.logits_sqnr_db != first.logits_sqnr_db
    assert seen[-1] == (300, 300) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert "per-layer output SQNR on the first 70 of them" in render_quality_markdown(quality, "t")


def test_sensitivity_is_ranked_most_sensitive_first(models):
    fp32, _, full = models
    quality = measure_quality(fp32, full, random_images(16), None, image_set="random",
                              sensitivity={"conv1": 30.0, "conv2": 12.5, "residual_add": 40.0, "fc": 20.0})  # fmt: skip
    markdown = render_quality_markdown(quality, "t")
    for node, cell in (("conv2", "12.5 (1)"), ("fc", "20.0 (2)"), ("conv1", "30.0 (3)"), ("residual_add", "40.0 (4)")):
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {node} |"))
        assert row.endswith(f"| {cell} |"), row


def test_markdown_and_png(models, tmp_path):
    fp32, partial, _ = models
    precisions = {"conv1": "fp16", "conv2": "int8", "residual_add": "int8", "fc": "int8"}
    quality = measure_quality(fp32, partial, random_images(32), None, image_set="random", precisions=precisions)
    markdown = render_quality_markdown(quality, "tiny")
    assert markdown.startswith("# tiny\n") and "| conv1 | Conv | fp16 |" in markdown and "| inf |" in markdown
    assert "not run here" in markdown
    png = render_quality_plot(quality, "tiny", tmp_path / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
