"""Data sources beyond Fashion-MNIST: CIFAR python batches (read safely) and ImageFolder."""

import os
import pickle

import numpy as np
import pytest

from engines.errors import UserError
from mimicnorm_deploy.training.data import load_cifar, load_dataset

PIL = pytest.importorskip("PIL")


def _write_pickle(path, obj):
    # Protocol 3: like the original Python 2 files, only numpy's array globals appear in it.
    path.write_bytes(pickle.dumps(obj, protocol=3))


def write_fake_cifar(directory, num_classes=10, per_batch=4, n_test=3):
    """Tiny CIFAR files in the official layout; keys are bytes, as in the original pickles."""
    rng = np.random.default_rng(0)
    label_key = b"labels" if num_classes == 10 else b"fine_labels"
    train = [f"data_batch_{i}" for i in range(1, 6)] if num_classes == 10 else ["train"]
    batches = {}
    for name, n in [(name, per_batch) for name in train] + [("test_batch" if num_classes == 10 else "test", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: rng.integers(0, num_classes, n).tolist(), b"batch_label": name.encode()}  # fmt: skip
        _write_pickle(directory / name, batch)
        batches[name] = batch
    meta_name, names_key = ("batches.meta", b"label_names") if num_classes == 10 else ("meta", b"fine_label_names")
    _write_pickle(directory / meta_name, {names_key: [f"name{i}".encode() for i in range(num_classes)]})
    return batches


def test_cifar10_batches_load_as_nchw_uint8(tmp_path):
    unpacked = tmp_path / "cifar-10-batches-py"
    unpacked.mkdir()
    batches = write_fake_cifar(unpacked)
    dataset = load_dataset("cifar10", tmp_path)  # the parent of the unpacked directory works too
    assert dataset.name == "cifar10" and dataset.classes[:2] == ["name0", "name1"]
    assert dataset.train_images.shape == (20, 3, 32, 32) and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (3, 3, 32, 32)
    first = batches["data_batch_1"]
    # Row layout: 1024 red values, then green, then blue, each plane row-major.
    assert np.array_equal(dataset.train_images[0, 1].ravel(), first[b"data"][0, 1024:2048])
    assert dataset.train_labels[:4].tolist() == first[b"labels"]
    assert dataset.test_labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar100_uses_fine_labels(tmp_path):
    batches = write_fake_cifar(tmp_path, num_classes=100)
    dataset = load_cifar(tmp_path, num_classes=100)
    assert dataset.name == "cifar100" and len(dataset.classes) == 100
    assert dataset.train_labels.tolist() == batches["train"][b"fine_labels"]


def test_cifar_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="data_batch_1.*not found.*--data-dir"):
        load_cifar(tmp_path)
    with pytest.raises(UserError, match="--data-dir"):
        load_dataset("cifar10", None)
    write_fake_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes((tmp_path / "data_batch_3").read_bytes()[:100])
    with pytest.raises(UserError, match="data_batch_3: corrupt CIFAR batch"):
        load_cifar(tmp_path)
    _write_pickle(tmp_path / "data_batch_3", {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UserError, match="N x 3072"):
        load_cifar(tmp_path)
    with pytest.raises(UserError, match="fine_labels"):  # CIFAR-10 files read as CIFAR-100
        write_fake_cifar(tmp_path)
        (tmp_path / "train").write_bytes((tmp_path / "data_batch_1").read_bytes())
        (tmp_path / "test").write_bytes((tmp_path / "test_batch").read_bytes())
        load_cifar(tmp_path, num_classes=100)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": _Exploit(marker)}))
    with pytest.raises(UserError, match=r"data_batch_2: refused to unpickle.*(posix|os)\.system"):
        load_cifar(tmp_path)
    assert not marker.exists()


def _write_image(path, size, colour):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_with_train_and_val_splits(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(n):
                _write_image(tmp_path / split / name / f"{i}.png", (40, 24), colour)
    from PIL import Image

    Image.new("L", (20, 30), 128).save(tmp_path / "train" / "dog" / "grey.jpg")  # grey becomes RGB
    dataset = load_dataset("imagefolder", tmp_path, image_size=16)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.train_images.shape == (7, 3, 16, 16) and dataset.test_images.shape == (2, 3, 16, 16)
    assert dataset.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 1] and dataset.test_labels.tolist() == [0, 1]
    assert dataset.train_images[0, :, 8, 8].tolist() == [255, 0, 0]
    assert dataset.test_images[1, :, 0, 0].tolist() == [0, 0, 255]
    grey = dataset.train_images[6]
    assert grey.min() == grey.max() == 128


def test_image_folder_without_splits_holds_out_a_seeded_test_split(tmp_path):
    for name in ("a", "b"):
        for i in range(10):
            _write_image(tmp_path / name / f"{i}.png", (8, 8), (i * 20, 0, 0))
    dataset = load_dataset("imagefolder", tmp_path, image_size=8)
    assert len(dataset.train_images) == 18 and len(dataset.test_images) == 2
    again = load_dataset("imagefolder", tmp_path, image_size=8)
    assert np.array_equal(dataset.test_images, again.test_images)


def test_empty_or_broken_image_folders_are_clear_errors(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="empty image folder"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        load_dataset("imagefolder", tmp_path / "missing")
    for i in range(9):
        _write_image(tmp_path / "cat" / f"{i}.png", (8, 8), (0, 0, 0))
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="broken.jpg: cannot decode"):
        load_dataset("imagefolder", tmp_path)


def test_channel_stats_match_the_float_computation():
    rng = np.random.default_rng(1)
    from mimicnorm_deploy.training.data import Dataset

    images = rng.integers(0, 256, (50, 3, 5, 5), dtype=np.uint8)
    dataset = Dataset("x", images, np.zeros(50, np.int64), images[:2], np.zeros(2, np.int64), ["a"])
    mean, std = dataset.channel_stats()
    pixels = images / 255.0
    assert np.allclose(mean, pixels.mean(axis=(0, 2, 3)), atol=1e-12)
    assert np.allclose(std, pixels.std(axis=(0, 2, 3)), atol=1e-12)
