"""Data sets as uint8 N x C x H x W arrays, plus batch augmentation and calibration sampling.

Everything is held in memory (Fashion-MNIST is 70k images of 32x32 after padding, ~70 MB), so
training needs no DataLoader workers, which on a 2-core CPU would only compete with the model.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass
class Dataset:
    name: str
    train_images: np.ndarray  # uint8, N x C x H x W
    train_labels: np.ndarray  # int64, N
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[2]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training split's pixels scaled to [0, 1]."""
        pixels = self.train_images.astype(np.float64) / 255.0
        return pixels.mean(axis=(0, 2, 3)).tolist(), pixels.std(axis=(0, 2, 3)).tolist()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, synthetic_size: int = 512) -> Dataset:
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "synthetic":
        return make_synthetic(synthetic_size)
    raise UserError(f"unknown dataset {name!r}; choose fashion-mnist or synthetic")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST from its four IDX files (gzipped or not), padded from 28x28 to 32x32."""
    root = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    arrays = {key: _read_idx(_find_idx(root, stem)) for key, stem in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise UserError(f"{root}: {split} images and labels differ in count; re-download the IDX files")
    # Zero padding to 32x32: the CIFAR-style ResNets' strides expect a multiple of 8, and zero is
    # Fashion-MNIST's own background.
    pad = ((0, 0), (0, 0), (2, 2), (2, 2))
    return Dataset(
        name="fashion-mnist",
        train_images=np.pad(arrays["train_images"][:, None], pad),
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=np.pad(arrays["test_images"][:, None], pad),
        test_labels=arrays["test_labels"].astype(np.int64),
        classes=FASHION_MNIST_CLASSES,
    )


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; install it with "
        "'sudo apt-get install dataset-fashion-mnist' or pass --data-dir DIR holding the four IDX files"
    )


def _read_idx(path: Path) -> np.ndarray:
    """IDX format: 2 zero bytes, a type code (0x08 = uint8), the number of dims, big-endian sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); re-download the IDX file") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise UserError(f"{path}: not a uint8 IDX file; pass the original Fashion-MNIST files")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path}: truncated IDX file (header says {shape}); re-download it")
    return data.reshape(shape)


def make_synthetic(size: int = 512, *, num_classes: int = 4, image_size: int = 16, seed: int = 0) -> Dataset:
    """A small learnable data set for tests: each class is a bright bar at its own position."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, n)
        images = rng.integers(0, 60, (n, 1, image_size, image_size))
        band = image_size // num_classes
        for i, label in enumerate(labels):
            images[i, 0, label * band : (label + 1) * band, 2:-2] += 160
        return images.astype(np.uint8), labels.astype(np.int64)

    train_images, train_labels = split(size)
    test_images, test_labels = split(max(size // 4, num_classes))
    return Dataset("synthetic", train_images, train_labels, test_images, test_labels,
                   [f"class{i}" for i in range(num_classes)])  # fmt: skip


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; the model normalizes internally."""
    return torch.as_tensor(images).float().div_(255.0)


def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip, per image, on a uint8 batch."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0:1] + torch.arange(h)).view(n, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w)).view(n, 1, 1, w)
    batch_index = torch.arange(n).view(n, 1, 1, 1)
    channel_index = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    cropped = padded[batch_index, channel_index, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), cropped.flip(3), cropped)


def calibration_indices(num_train: int, count: int, seed: int = 0) -> np.ndarray:
    """A deterministic sample of training-split indices: calibration never sees the test split."""
    if count <= 0:
        raise UserError(f"calibration sample size must be positive, got {count}")
    count = min(count, num_train)
    return np.sort(np.random.default_rng(seed).choice(num_train, size=count, replace=False))
