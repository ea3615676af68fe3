"""Data: IDX reading, padding, augmentation, calibration sampling."""

import gzip

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.data import (  # noqa: E402
    FASHION_MNIST_FILES,
    augment_batch,
    calibration_indices,
    load_fashion_mnist,
)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_fashion_mnist(directory, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)), "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)), "test_labels": rng.integers(0, 10, n_test),
    }  # fmt: skip
    for key, stem in FASHION_MNIST_FILES.items():
        data = _idx(arrays[key])
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_and_pad_to_32(tmp_path, gz):
    arrays = write_fake_fashion_mnist(tmp_path, gz=gz)
    dataset = load_fashion_mnist(tmp_path)
    assert dataset.train_images.shape == (6, 1, 32, 32) and dataset.test_images.shape == (4, 1, 32, 32)
    assert np.array_equal(dataset.train_images[:, 0, 2:30, 2:30], arrays["train_images"])
    assert dataset.train_images[:, :, :2].max() == 0  # zero padding
    assert dataset.train_labels.tolist() == arrays["train_labels"].tolist()


def test_missing_and_truncated_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        load_fashion_mnist(tmp_path)
    write_fake_fashion_mnist(tmp_path, gz=False)
    stem = FASHION_MNIST_FILES["test_images"]
    (tmp_path / stem).write_bytes((tmp_path / stem).read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        load_fashion_mnist(tmp_path)


def test_calibration_sample_is_deterministic_and_from_the_training_split():
    a, b = calibration_indices(1000, 64, seed=3), calibration_indices(1000, 64, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 64 and a.max() < 1000
    assert not np.array_equal(a, calibration_indices(1000, 64, seed=4))
    with pytest.raises(UserError):
        calibration_indices(1000, 0)


def test_augmentation_is_a_shifted_possibly_flipped_copy():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.uint8).view(2, 1, 8, 8)
    out = augment_batch(images, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for original, augmented in zip(images, out, strict=True):
        padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
        candidates = [padded[:, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(augmented, x) or torch.equal(augmented, x.flip(2)) for x in candidates)


def test_resized_crop_of_the_whole_image_without_flip_is_the_image():
    from mimicnorm_deploy.training.data import random_resized_crop_batch

    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop_batch(images, torch.Generator().manual_seed(1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    # Full-area square crops: each output is the image or its mirror, exactly.
    for original, augmented in zip(images, out, strict=True):
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(2))


def test_resized_crop_zooms_into_part_of_the_image():
    from mimicnorm_deploy.training.data import random_resized_crop_batch

    # Left half 0, right half 255: a crop of a quarter of the area sees mostly one side or a boundary.
    images = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    images[..., 8:] = 255
    out = random_resized_crop_batch(images, torch.Generator().manual_seed(0), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    bright = (out.float().mean(dim=(1, 2, 3)) / 255).tolist()
    assert min(bright) < 0.35 and max(bright) > 0.65  # different crops see different parts
