import numpy as np
import pytest
from tiny_onnx import random_images

from calibration.data import ArrayCalibrationReader


def test_reader_serves_every_image_in_batches_and_reports_progress():
    images = random_images(70)
    calls = []
    reader = ArrayCalibrationReader(images, "images", 32, progress=lambda done, total: calls.append((done, total)))
    assert len(reader) == 3

    batches = []
    while (feed := reader.get_next()) is not None:
        assert list(feed) == ["images"]
        batches.append(feed["images"])
    assert reader.get_next() is None  # stays exhausted and reports nothing more

    assert [len(b) for b in batches] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    assert all(b.flags["C_CONTIGUOUS"] and b.dtype == np.float32 for b in batches)
    # one call per batch, made once that batch has run (when the next one is asked for)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_reader_makes_strided_input_contiguous():
    images = np.ascontiguousarray(random_images(4, size=6).transpose(0, 1, 3, 2))[:, :, ::2, :]
    assert not images.flags["C_CONTIGUOUS"]
    reader = ArrayCalibrationReader(images, "x", 2)
    feed = reader.get_next()
    assert feed["x"].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(feed["x"], images[:2])


@pytest.mark.parametrize(
    ("images", "batch_size"),
    [
        (np.zeros((2, 1, 4, 4), np.float64), 1),
        (np.zeros((2, 4, 4), np.float32), 1),
        (np.zeros((2, 1, 4, 4), np.float32), 0),
    ],
)
def test_reader_rejects_bad_arguments(images, batch_size):
    with pytest.raises(ValueError):
        ArrayCalibrationReader(images, "x", batch_size)
