"""A new user's own ImageFolder through prepare-data and train: data flags given once, defaults
that fit a small folder (and say so), no silent cut, the held-out split named for what it is."""

import json

import numpy as np
import pytest

from mimicnorm_deploy.stages import MIN_TOTAL_STEPS, fit_to_data

CLASSES, PER_CLASS, SIZE = 3, 10, 8


def test_defaults_fit_a_small_training_split():
    batch, epochs, note = fit_to_data(108, None, None)
    assert (batch, epochs) == (8, 15.0)  # 14 steps per epoch, 210 >= MIN_TOTAL_STEPS
    assert note == ("adjusted for 108 training images: --batch-size 128 -> 8, --epochs 2 -> 15 "
                    "(14 steps per epoch, 210 in all); pass them to choose")  # fmt: skip
    assert 15 * 14 >= MIN_TOTAL_STEPS > 14 * 14


def test_given_values_are_kept_and_large_data_is_left_alone():
    assert fit_to_data(60_000, None, None) == (128, 2.0, None)
    assert fit_to_data(108, 32, 3.0) == (32, 3.0, None)
    assert fit_to_data(5, None, 1.0)[0] == 5  # never a batch larger than the split


@pytest.fixture
def folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        for i in range(PER_CLASS):
            (tmp_path / "imgs" / f"class{c}").mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            pil.fromarray(pixels).save(tmp_path / "imgs" / f"class{c}" / f"{i}.png")
    return tmp_path


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.torch
def test_own_images_end_to_end_flags_once(folder, capsys):
    pytest.importorskip("torch")
    from mimicnorm_deploy.cli import main

    data = folder / "mine" / "data"
    assert main(["prepare-data", "--dataset", "imagefolder", "--data-dir", str(folder / "imgs"),
                 "--image-size", str(SIZE), "--out", str(data)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    train_images = CLASSES * PER_CLASS - 3  # a seeded 10 % is held out
    assert f"adjusted: --calibration-count 512 -> {train_images}" in captured.err
    assert "a validation split" in captured.out
    assert sorted(p.name for p in data.iterdir()) == ["calib.npz", "dataset.json", "manifest.json", "val.npz"]
    source = json.loads((data / "dataset.json").read_text())
    assert source["dataset"] == "imagefolder" and source["image_size"] == SIZE and source["held_out_split"] == "val"

    run = folder / "mine" / "mimic"
    # --epochs given (one step, to keep the test short): only the batch is adjusted.
    assert main(["train", "--data", str(data), "--epochs", "1", "--max-steps-per-epoch", "1", "--out", str(run)]) == 0
    captured = capsys.readouterr()
    assert f"adjusted for {train_images} training images: --batch-size 128 -> 8 (4 steps per epoch" in captured.err
    assert "val accuracy" in captured.out
    config = json.loads((run / "train_report.json").read_text())["config"]
    assert config["batch_size"] == 8 and config["epochs"] == 1


@pytest.mark.torch
def test_explicit_calibration_count_is_never_cut(folder, capsys):
    pytest.importorskip("torch")
    from mimicnorm_deploy.cli import main

    assert main(["prepare-data", "--dataset", "imagefolder", "--data-dir", str(folder / "imgs"), "--image-size",
                 str(SIZE), "--calibration-count", "100", "--out", str(folder / "data")]) == 2  # fmt: skip
    expected = "error: --calibration-count 100 is more than the 27 training images; pass 27 or fewer"
    assert _err_lines(capsys) == [expected]
    assert not (folder / "data" / "calib.npz").exists()


@pytest.mark.torch
def test_data_flags_and_data_directory_are_exclusive(folder, capsys):
    pytest.importorskip("torch")
    from mimicnorm_deploy.cli import main

    assert main(["train", "--data", str(folder), "--dataset", "synthetic", "--out", str(folder / "run")]) == 2
    assert _err_lines(capsys) == [f"error: --data {folder} already names the data set; drop --dataset"]
    assert main(["train", "--data", str(folder / "imgs"), "--out", str(folder / "run")]) == 2
    assert "dataset.json: no such file" in _err_lines(capsys)[0]
