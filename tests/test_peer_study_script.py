"""scripts/peer_study.py on tiny models (smoke test; the study itself is not run in CI)."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from script_loader import load_script
from tiny_onnx import make_tiny_resnet, random_images

from calibration.ranges import calibrate_ranges
from engines.artifacts import load_image_set, save_image_set


def test_peer_study_scores_every_variant_and_counts_qdq_readers(tmp_path, capsys):
    study = load_script("peer_study")
    model = make_tiny_resnet(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    for name, n in (("calib", 64), ("test", 48)):
        pixels = (random_images(n, seed=n) * 255).astype(np.uint8)
        save_image_set(tmp_path / f"{name}.npz", pixels, rng.integers(0, 3, n), 1 / 255)

    assert study.main([str(model), "--calib", str(tmp_path / "calib.npz"), "--test", str(tmp_path / "test.npz"),
                       "--calibration-images", "32", "--methods", "minmax", "--out", str(tmp_path / "out")]) == 0
    # (entropy takes the same path with another method name, and minutes on a loaded CI machine)
    result = json.loads((tmp_path / "out" / "peer_study.json").read_text())
    assert result["calibration_images"] == 32 and result["test_images"] == 48
    variants = result["models"][0]["variants"]
    # no modelopt without its interpreter
    assert set(variants) == {"ours minmax, desktop-gpu", "ours minmax, desktop-gpu, classifier float",
                             "ours minmax, cpu", "quantize_static defaults"}  # fmt: skip
    for name, variant in variants.items():
        assert 0 <= variant["simulated"] <= 1 and variant["cpu_seconds"] > 0, name
        assert (variant["kernels"] is None) == ("desktop-gpu" in name), name  # TensorRT does not run here
    # TensorRT's placement: conv1, conv2, fc and the residual Add's skip input read activations; three weights
    assert variants["ours minmax, desktop-gpu"]["qdq"] == {"activation:Add": 1, "activation:Conv": 2,
                                                           "activation:Gemm": 1, "weight:Conv": 2, "weight:Gemm": 1}
    assert variants["ours minmax, desktop-gpu, classifier float"]["qdq"] == {"activation:Add": 1, "activation:Conv": 2,
                                                                             "weight:Conv": 2}  # fmt: skip
    # ORT's own placement quantizes more: the pooling, the input scale-shift; and its biases (int32)
    assert {"activation:GlobalAveragePool", "activation:Mul", "bias:Conv", "bias:Gemm"} <= set(
        variants["quantize_static defaults"]["qdq"])
    assert "| ours minmax, desktop-gpu |" in (tmp_path / "out" / "peer_study.md").read_text()
    assert "FP32" in capsys.readouterr().out

    # the amax read back from the kept models is the calibrated range, also in the FP16 graph (scales in FP16)
    kept = tmp_path / "out" / "models" / study.model_tag(model)
    ranges = calibrate_ranges(model, load_image_set(tmp_path / "calib.npz")[0][:32])
    amax = study.activation_amax(kept / "ours-minmax-desktop-gpu.onnx")
    assert amax and all(amax[name] == pytest.approx(ranges.amax[name], rel=1e-3) for name in amax)
    comparison = study.compare_amax(kept / "ours-minmax-desktop-gpu.onnx",
                                    kept / "ours-minmax-desktop-gpu-classifier-float.onnx")  # fmt: skip
    assert len(comparison["tensors"]) == len(amax) - 1  # all but the classifier's input
    assert comparison["ratio_min"] == comparison["ratio_max"] == 1.0


def test_peer_study_keeps_earlier_models_and_runs_a_modelopt_interpreter(tmp_path):
    """A second run into the same --out adds its model; --test-images cuts the test set; the modelopt
    columns come from the interpreter given (here a fake that writes the FP32 model unchanged, then one that fails)."""
    study = load_script("peer_study")
    for norm in ("mimic", "bn"):
        (tmp_path / "a" / norm / "seed0").mkdir(parents=True)
    first = make_tiny_resnet(tmp_path / "a" / "mimic" / "seed0" / "model.onnx")
    second = make_tiny_resnet(tmp_path / "a" / "bn" / "seed0" / "model.onnx")
    rng = np.random.default_rng(0)
    for name, n in (("calib", 32), ("test", 48)):
        pixels = (random_images(n, seed=n) * 255).astype(np.uint8)
        save_image_set(tmp_path / f"{name}.npz", pixels, rng.integers(0, 3, n), 1 / 255)
    fake = tmp_path / "fake-modelopt-python"
    fake.write_text('#!/bin/sh\nif [ $# -eq 2 ]; then echo 0.0-fake; exit 0; fi\n'
                    'if [ "$5" = entropy ]; then echo "RuntimeError: fake failure" >&2; exit 1; fi\n'
                    'cp "$3" "$6" && echo \'{"cpu_seconds": 0.5}\'\n')  # fmt: skip
    fake.chmod(0o755)
    common = ["--calib", str(tmp_path / "calib.npz"), "--test", str(tmp_path / "test.npz"), "--test-images", "40",
              "--methods", "minmax", "--tensorrt-only", "--modelopt-python", str(fake), "--out", str(tmp_path / "out")]
    assert study.main([str(first), *common]) == 0 and study.main([str(second), *common]) == 0
    result = json.loads((tmp_path / "out" / "peer_study.json").read_text())
    assert result["test_images"] == 40 and result["versions"]["modelopt"] == "0.0-fake"
    assert [row["model"] for row in result["models"]] == [str(first), str(second)]
    for row in result["models"]:
        variants = row["variants"]
        assert variants["modelopt max"]["simulated"] == row["fp32"] and variants["modelopt max"]["cpu_seconds"] == 0.5
        assert variants["modelopt entropy"] == {"error": "modelopt failed: RuntimeError: fake failure"}
        assert set(variants) == {"ours minmax, desktop-gpu", "ours minmax, desktop-gpu, classifier float",
                                 "modelopt max", "modelopt entropy"}  # --tensorrt-only: no cpu, no quantize_static
        assert set(row["paired_vs_modelopt"]) == {"ours minmax, desktop-gpu vs modelopt max",
                                                  "ours minmax, desktop-gpu, classifier float vs modelopt max"}
        flips = row["paired_vs_modelopt"]["ours minmax, desktop-gpu vs modelopt max"]
        right = {k: np.load(tmp_path / "out" / "models" / study.model_tag(Path(row["model"])) / f"{k}.top1.npy")
                 == load_image_set(tmp_path / "test.npz")[1][:40] for k in ("ours-minmax-desktop-gpu", "modelopt-max")}
        assert flips["ours_only_right"] == np.sum(right["ours-minmax-desktop-gpu"] & ~right["modelopt-max"])
        assert flips["peer_only_right"] == np.sum(right["modelopt-max"] & ~right["ours-minmax-desktop-gpu"])
    assert (tmp_path / "out" / "models" / "a-bn-seed0" / "modelopt-max.onnx").is_file()
    table = (tmp_path / "out" / "peer_study.md").read_text()
    assert "| a-bn-seed0 | modelopt entropy | | refused: modelopt failed" in table


def test_peer_study_refuses_an_unlabelled_test_set(tmp_path, capsys):
    study = load_script("peer_study")
    model = make_tiny_resnet(tmp_path / "model.onnx")
    pixels = (random_images(32) * 255).astype(np.uint8)
    save_image_set(tmp_path / "calib.npz", pixels, None, 1 / 255)
    assert study.main([str(model), "--calib", str(tmp_path / "calib.npz"), "--test", str(tmp_path / "calib.npz"),
                       "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "out").exists()


def test_qdq_counts_tells_quantized_weights_from_activations(tmp_path):
    """A weight quantized in the graph (float initializer -> Q -> DQ, as modelopt writes it) is a
    weight; an int8 initializer read by DQ is one too; anything computed is an activation."""
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    w_float = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w_float")
    w_int8 = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), "w_int8")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"]),
        helper.make_node("QuantizeLinear", ["w_float", "scale", "zero"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c1"]),
        helper.make_node("QuantizeLinear", ["c1", "scale", "zero"], ["c1q"]),
        helper.make_node("DequantizeLinear", ["c1q", "scale", "zero"], ["c1d"]),
        helper.make_node("DequantizeLinear", ["w_int8", "scale", "zero"], ["w2d"]),
        helper.make_node("Conv", ["c1d", "w2d"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [scale, zero, w_float, w_int8])  # fmt: skip
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    assert load_script("peer_study").qdq_counts(path) == {"activation:Conv": 2, "weight:Conv": 2}


def test_paired_counts_the_images_one_model_alone_gets_right_and_their_sign_test():
    labels = np.zeros(20, np.int64)
    ours, peer = np.zeros(20, np.int64), np.zeros(20, np.int64)
    ours[:1] = 1  # ours alone wrong on image 0
    peer[1:6] = 1  # peer alone wrong on images 1-5
    ours[10:12] = peer[10:12] = 2  # both wrong: not a flip
    flips = load_script("peer_study").paired(ours, peer, labels)
    # 6 discordant images split 5:1; P(split at least this uneven) = 2 (C(6,0) + C(6,1)) / 2^6
    assert flips == {"ours_only_right": 5, "peer_only_right": 1, "p_value": pytest.approx(14 / 64)}
    assert load_script("peer_study").paired(ours, ours, labels)["p_value"] == 1.0
