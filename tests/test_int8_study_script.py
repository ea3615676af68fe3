"""scripts/int8_study.py's evaluate phase on tiny ONNX models (no training): it must keep running."""

from argparse import Namespace

import numpy as np
from script_loader import load_script
from tiny_onnx import make_tiny_mobilenet, make_tiny_resnet, random_images

from engines.artifacts import load_image_set, read_json, save_image_set, write_json


def test_evaluate_phase_scores_every_variant_and_summarizes(tmp_path):
    study = load_script("int8_study")
    # the BN-folded twin gets a planted 50x channel spread, like BN folding makes
    for norm, scales in (("mimic", None), ("bn", np.array([50.0, 1.0, 1.0, 1.0]))):
        directory = study.model_dir(tmp_path, "tiny", norm, 0)
        directory.mkdir(parents=True)
        make_tiny_resnet(directory / "model.onnx", channel_scales=scales)
    rng = np.random.default_rng(0)
    for name, n in (("calib", 128), ("test", 64)):
        pixels = (random_images(n, seed=n) * 255).astype(np.uint8)
        save_image_set(tmp_path / "data" / f"{name}.npz", pixels, rng.integers(0, 3, n), 1 / 255)

    args = Namespace(archs=["tiny"], seeds=[0])
    rows = study.evaluate_models(args, tmp_path)
    assert [(r["norm"], r["seed"]) for r in rows] == [("mimic", 0), ("bn", 0)]
    for row in rows:
        assert set(row["int8"]) == {f"{g} {m}" for g in study.GRANULARITIES for m in study.METHODS} | {
            study.CLIPPED_INPUT}
        assert all(0 <= value <= 1 for value in row["int8"].values())
        assert set(row["plans"]) == {"per-tensor minmax", "per-tensor entropy"}
    assert rows[1]["worst_spread"] > 10 * rows[0]["worst_spread"]
    # The tiny ResNet's one conv -> Relu -> conv chain also feeds the residual Add: nothing to equalize.
    for row in rows:
        assert row["cle"]["pairs"] == 0 and row["cle"]["fp32"] == row["fp32"]
        assert set(row["cle"]["int8"]) == {f"per-tensor {m}" for m in study.CLE_METHODS}
        assert row["cle"]["absorbed"]["pairs"] == 0 and row["cle"]["absorbed"]["fp32"] == row["fp32"]
    assert (tmp_path / "tiny" / "bn" / "seed0" / study.RESULT_FILE).is_file()  # the phase resumes from these

    table = study.summarize(rows)
    assert "| tiny | MimicNorm |" in table and "| tiny | BN-folded |" in table
    assert "per-tensor minmax + CLE" in table and "per-tensor minmax + CLE + BA" in table
    assert study.evaluate_models(args, tmp_path) == rows  # read back, not recomputed


def test_results_from_before_the_cle_columns_get_them_added(tmp_path):
    study = load_script("int8_study")
    for norm, scales in (("mimic", None), ("bn", np.array([100.0, 0.05, 1, 3, 0.2, 1, 40, 1]))):
        directory = study.model_dir(tmp_path, "tiny", norm, 0)
        directory.mkdir(parents=True)
        make_tiny_mobilenet(directory / "model.onnx", channel_scales=scales)
        old = {"arch": "tiny", "norm": norm, "seed": 0, "fp32": 0.5, "int8": {}, "plans": {}}
        write_json(directory / study.RESULT_FILE, *study.INT8_STUDY_MODEL, old)
    rng = np.random.default_rng(0)
    for name, n in (("calib", 128), ("test", 64)):
        pixels = (random_images(n, seed=n) * 255).astype(np.uint8)
        save_image_set(tmp_path / "data" / f"{name}.npz", pixels, rng.integers(0, 3, n), 1 / 255)
    data = {"ranges": load_image_set(tmp_path / "data" / "calib.npz")[0][:64],
            "test": load_image_set(tmp_path / "data" / "test.npz")}  # fmt: skip
    cle = study.evaluate_equalized(directory, data, lambda message: None)
    assert cle["pairs"] == 2 and cle["worst_spread"] < 10
    # Bias absorption: the depthwise -> project pair only (the depthwise conv is zero-padded).
    assert cle["absorbed"]["pairs"] == 1 and set(cle["absorbed"]["int8"]) == set(cle["int8"])
    rows = [r for r in study.evaluate_models(Namespace(archs=["tiny"], seeds=[0]), tmp_path) if r["norm"] == "bn"]
    assert rows[0]["cle"] == cle  # computed once, added to the old result, and saved
    assert read_json(directory / study.RESULT_FILE, *study.INT8_STUDY_MODEL)["cle"] == cle
