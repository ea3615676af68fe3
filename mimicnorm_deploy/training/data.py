"""Data sets as uint8 N x C x H x W arrays, plus batch augmentation and calibration sampling.

Everything is held in memory (Fashion-MNIST is 70k images of 32x32 after padding, ~70 MB; CIFAR
60k of 3x32x32, ~180 MB), so training needs no DataLoader workers, which on a 2-core CPU would
only compete with the model. ImageFolder data sets are decoded once, at load time, to one fixed
size: fine for small folders, not for ImageNet (1.28M images of 3x224x224 would be ~190 GB).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
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
    # What the held-out split is: "test" (the data set's own test split, or an ImageFolder's test/)
    # or "val" (an ImageFolder's val/, or images held out of the training folders at random).
    test_split: str = "test"

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[2]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training split's pixels scaled to [0, 1].

        From a 256-bin histogram per channel: exact, and no float copy of the whole split
        (CIFAR's would be 1.2 GB in float64).
        """
        values = np.arange(256, dtype=np.float64) / 255.0
        means, stds = [], []
        for channel in range(self.in_chans):
            counts = np.bincount(self.train_images[:, channel].ravel(), minlength=256).astype(np.float64)
            weights = counts / counts.sum()
            mean = float(weights @ values)
            means.append(mean)
            stds.append(float(np.sqrt(max(weights @ (values - mean) ** 2, 0.0))))
        return means, stds


DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic")


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, synthetic_size: int = 512, image_size: int = 32
) -> Dataset:
    """Load a data set by name; `image_size` is the side ImageFolder images are resized and cropped to."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name in ("cifar10", "cifar100"):
        return load_cifar(_require_dir(name, data_dir), num_classes=10 if name == "cifar10" else 100)
    if name == "imagefolder":
        return load_image_folder(_require_dir(name, data_dir), image_size)
    if name == "synthetic":
        return make_synthetic(synthetic_size)
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _require_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        raise UserError(f"the {name} data set is read from a local directory; pass --data-dir DIR")
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory; pass --data-dir pointing at the {name} data")
    return root


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


# --- CIFAR-10/100: the python-pickle batches of https://www.cs.toronto.edu/~kriz/cifar.html ---------

# Per variant: the sub-directory the archive unpacks to, training and test batch files, the label
# key in each batch and the class-name key in the meta file.
_CIFAR = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
         "batches.meta", "label_names"),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}  # fmt: skip


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: dicts, lists, bytes, str, ints and numpy arrays.

    The batches are pickles, and a pickle can call any importable function; this one resolves
    just the four names numpy's array reconstruction needs and refuses every other global.
    """

    _reconstruct = np.zeros(0).__reduce__()[0]  # numpy's own, whatever module numpy keeps it in
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 1.x (and Python 2)
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2.x
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch") from None


def _read_cifar_pickle(path: Path) -> dict[str, object]:
    """One CIFAR file as a dict with str keys (Python 2 pickles give bytes keys)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc}); re-download the CIFAR python archive") from None
    try:
        # encoding="bytes": the original files are Python 2 pickles, whose str are raw bytes.
        document = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "not allowed" in str(exc):
            raise UserError(f"{path}: refused to unpickle ({exc}); this is not a CIFAR batch") from None
        raise UserError(f"{path}: corrupt CIFAR batch ({exc}); re-download the CIFAR python archive") from None
    except Exception as exc:  # a damaged pickle can fail in many ways (EOFError, ValueError, ...)
        raise UserError(f"{path}: corrupt CIFAR batch ({type(exc).__name__}: {exc}); re-download it") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: not a CIFAR batch (a pickled {type(document).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in document.items()}


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_cifar_pickle(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: corrupt CIFAR batch ('data' is not an N x 3072 uint8 array); re-download it")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.shape != (len(data),):
        raise UserError(
            f"{path}: corrupt CIFAR batch (no {label_key!r} list matching 'data'); is it CIFAR-{num_classes}?"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels outside 0..{num_classes - 1}; is this CIFAR-{num_classes}?")
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major: already N x C x H x W.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(data_dir: str | os.PathLike, num_classes: int = 10) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python version's batch files.

    `data_dir` is the unpacked directory (cifar-10-batches-py, cifar-100-python) or its parent.
    """
    if num_classes not in _CIFAR:
        raise UserError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    subdir, train_files, test_files, label_key, meta_file, names_key = _CIFAR[num_classes]
    root = Path(data_dir)
    if not (root / train_files[0]).is_file() and (root / subdir).is_dir():
        root = root / subdir
    missing = [name for name in train_files + test_files if not (root / name).is_file()]
    if missing:
        raise UserError(
            f"CIFAR-{num_classes} file(s) {', '.join(missing)} not found in {root}; pass --data-dir DIR holding the "
            f"unpacked python version ({subdir}/ from cifar-{num_classes}-python.tar.gz)"
        )
    splits = {}
    for split, names in (("train", train_files), ("test", test_files)):
        parts = [_cifar_batch(root / name, label_key, num_classes) for name in names]
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    classes = [f"class{i}" for i in range(num_classes)]
    if (root / meta_file).is_file():
        names = _read_cifar_pickle(root / meta_file).get(names_key)
        if isinstance(names, list) and len(names) == num_classes:
            classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    return Dataset(f"cifar{num_classes}", *splits["train"], *splits["test"], classes)


# --- ImageFolder: one sub-directory per class --------------------------------------------------

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")


def load_image_folder(
    data_dir: str | os.PathLike, image_size: int = 32, *, test_fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """Images in class sub-directories (torchvision's ImageFolder layout), decoded once to RGB uint8.

    With `train/` and `val/` (or `test/`) sub-directories those are the splits; otherwise the
    class directories sit directly under `data_dir` and a seeded `test_fraction` of the images
    is held out as the test split. Each image's shorter side is resized to `image_size` and the
    centre cropped square, as torchvision's Resize + CenterCrop evaluation transform does.
    """
    if image_size <= 0:
        raise UserError(f"image size must be positive, got {image_size}")
    root = Path(data_dir)
    train_root = root / "train" if (root / "train").is_dir() else root
    test_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    classes, train_files = _scan_image_folder(train_root)
    if test_root is None:
        order = np.random.default_rng(seed).permutation(len(train_files))
        n_test = round(len(train_files) * test_fraction)
        if n_test == 0 or n_test == len(train_files):
            raise UserError(f"{root}: {len(train_files)} images are too few to hold out a test split; add val/")
        test_files = [train_files[i] for i in sorted(order[:n_test])]
        train_files = [train_files[i] for i in sorted(order[n_test:])]
    else:
        test_classes, test_files = _scan_image_folder(test_root)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise UserError(f"{test_root}: classes {', '.join(unknown)} have no training images in {train_root}")
        test_files = [(path, classes.index(test_classes[label])) for path, label in test_files]
    train_images, train_labels = _decode_images(train_files, image_size)
    test_images, test_labels = _decode_images(test_files, image_size)
    split = test_root.name if test_root is not None else "val"
    return Dataset("imagefolder", train_images, train_labels, test_images, test_labels, classes, test_split=split)


def _scan_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names, and (path, class index) for every image, in a deterministic order."""
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not files:
        raise UserError(
            f"{root}: empty image folder (no class sub-directories with {', '.join(IMAGE_EXTENSIONS)} files); "
            "pass a directory laid out as CLASS_NAME/IMAGE"
        )
    return classes, files


def _decode_images(files: list[tuple[Path, int]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise UserError("reading image folders needs Pillow: pip install 'mimicnorm-deploy[train]'") from None
    images = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"{path}: cannot decode image ({exc}); remove or replace the file") from None
        # fit = scale the shorter side to image_size, then crop the centre square.
        square = ImageOps.fit(rgb, (image_size, image_size), method=Image.Resampling.BILINEAR)
        images[i] = np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)
    return images, np.array([label for _, label in files], dtype=np.int64)


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


def random_resized_crop_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """ImageNet-style augmentation on a uint8 batch: per image, a crop of a random area fraction
    (`scale`) and aspect ratio (`ratio`, log-uniform) at a random position, resized back to the
    input size (bilinear), then a random horizontal flip. One batched grid_sample, no per-image loop."""
    n = images.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    # Crop size as a fraction of the image side, clipped to fit (torchvision retries instead; clipping
    # keeps the batch vectorized and only narrows extreme aspect ratios).
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # Centres in normalized [-1, 1] coordinates such that the crop stays inside the image.
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    resized = torch.nn.functional.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def calibration_indices(num_train: int, count: int, seed: int = 0) -> np.ndarray:
    """A deterministic sample of training-split indices: calibration never sees the test split."""
    if count <= 0:
        raise UserError(f"calibration sample size must be positive, got {count}")
    count = min(count, num_train)
    return np.sort(np.random.default_rng(seed).choice(num_train, size=count, replace=False))
