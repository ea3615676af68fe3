"""Artifact I/O shared by every stage: atomic writes, hashes, versioned JSON, the run manifest.

This lives in `engines`, the bottom layer (numpy + onnxruntime only), so that `calibration` and
`mimicnorm_deploy` can use it without `engines` ever importing them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import UserError
from engines.schemas import RUN_MANIFEST

MANIFEST_NAME = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A failure (or Ctrl-C) inside the block leaves no half-written artifact behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def staged_files(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a private staging directory inside `directory`; if the block succeeds, move every file
    written there into `directory` under the same name, else delete them all.

    For a stage that writes several files that only make sense together: a failure in the middle
    (an FP16 overflow found after the INT8 model was written) leaves none of them behind.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staged.", dir=target) as staging:
        yield Path(staging)
        mode = _new_file_mode()
        for staged in sorted(Path(staging).iterdir()):
            os.chmod(staged, mode)
            os.replace(staged, target / staged.name)


def _new_file_mode() -> int:
    """The permissions any new file would get: temporary files are created 0600, artifacts are not."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, schema: str, version: int, payload: dict[str, Any]) -> Path:
    """Write a versioned JSON artifact: `{"schema": ..., "schema_version": ..., **payload}`.

    Non-finite floats (an SQNR of identical outputs is +inf) become null: strict JSON has no
    Infinity, and other tools reading these files would reject it.
    """
    document = _finite({"schema": schema, "schema_version": version, **payload})
    text = json.dumps(document, indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    return atomic_write_text(path, _inline_number_lists(text) + "\n")


# A JSON array holding only numbers, as json.dumps(indent=...) spreads it: one number per line.
_NUMBER_LIST = re.compile(r"\[\n\s*(-?[0-9][0-9.eE+-]*(?:,\n\s*-?[0-9][0-9.eE+-]*)*)\n\s*\]")


def _inline_number_lists(text: str) -> str:
    # One line per number would make a bench file's thousands of raw latency samples ten times
    # longer. The match needs raw newlines, which JSON strings never contain, so no string changes.
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)


def read_json(
    path: str | os.PathLike, schema: str, version: int, *, hint: str = "re-run the stage that wrote it"
) -> dict[str, Any]:
    """Read a JSON artifact and check its schema name and version; raise UserError otherwise
    (`hint`: how to get a file of this version)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file; check the path or run the stage that writes it")
    try:
        document = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{p}: not a JSON file ({exc.__class__.__name__}); pass the {schema} file") from None
    if not isinstance(document, dict) or document.get("schema") != schema:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise UserError(f"{p}: expected a {schema} file, found {found!r}; pass the right artifact")
    if document.get("schema_version") != version:
        raise UserError(
            f"{p}: {schema} schema version {document.get('schema_version')} is not supported "
            f"(this toolkit reads version {version}); {hint}"
        )
    return document


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _jsonable(value: Any) -> Any:
    # numpy scalars/arrays and paths appear in results; JSON gets plain Python values.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that change numbers; absent ones are left out."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for dist in ("numpy", "onnx", "onnxruntime", "torch", "tensorrt"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    return versions


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def record_artifact(
    run_dir: str | os.PathLike,
    artifact: str | os.PathLike,
    stage: str,
    inputs: Sequence[str | os.PathLike] = (),
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add (or replace) `artifact`'s entry in `run_dir/manifest.json`.

    The entry holds the file's sha256, the stage that made it, the sha256 of each input, the
    stage's parameters, library versions and the machine. Paths are stored relative to run_dir.
    """
    run = Path(run_dir)
    manifest = _load_run_manifest(run)
    rel = _relative(run, artifact)
    manifest["artifacts"][rel] = {
        "sha256": sha256_file(artifact),
        "stage": stage,
        "inputs": {_relative(run, i): sha256_file(i) for i in inputs},
        "params": params or {},
        "versions": library_versions(),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "created": now_utc(),
    }
    write_json(run / MANIFEST_NAME, *RUN_MANIFEST, {"artifacts": manifest["artifacts"]})
    return manifest["artifacts"][rel]


def verify_artifact(run_dir: str | os.PathLike, artifact: str | os.PathLike) -> None:
    """Raise UserError if `artifact` differs from what the run manifest recorded for it.

    An artifact the manifest does not know (e.g. a file carried to a Jetson on its own) passes:
    the manifest guards against stale or edited files, it is not required to use one.
    """
    run = Path(run_dir)
    if not (run / MANIFEST_NAME).is_file():
        return
    entry = _load_run_manifest(run)["artifacts"].get(_relative(run, artifact))
    if entry is not None and entry["sha256"] != sha256_file(artifact):
        raise UserError(
            f"{artifact}: changed since stage '{entry['stage']}' wrote it (sha256 mismatch with "
            f"{run / MANIFEST_NAME}); re-run '{entry['stage']}'"
        )


def _load_run_manifest(run: Path) -> dict[str, Any]:
    path = run / MANIFEST_NAME
    if not path.is_file():
        return {"artifacts": {}}
    return read_json(path, *RUN_MANIFEST)


def _relative(run: Path, path: str | os.PathLike) -> str:
    p = Path(path).resolve()
    try:
        return p.relative_to(run.resolve()).as_posix()
    except ValueError:
        return str(p)


# --- Image sets -------------------------------------------------------------------------------
# Calibration and evaluation images travel to the target as one small, torch-free format: an
# .npz with `images` (uint8, N x C x H x W, already resized/padded to the model's input size),
# optional `labels` (int64, N) and `scale` (float32 scalar). The model input is
# `images.astype(float32) * scale`: dataset normalization is folded into the model itself, so
# the deployed engine needs no preprocessing beyond that. npz is read with allow_pickle=False.


def save_image_set(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None, scale: float) -> Path:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {images.shape}")
    arrays = {"images": images, "scale": np.float32(scale)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return Path(path)


def load_image_set(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (float32 model inputs N x C x H x W, int64 labels or None); UserError on a malformed set."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such image set; pass the .npz written by 'mimicnorm-deploy prepare-data'")
    if not zipfile.is_zipfile(p):
        raise UserError(f"{p}: not an image set (not an .npz archive); {IMAGE_SET_HINT}")
    try:
        with np.load(p, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            missing = [key for key in ("images", "scale") if key not in data.files]
            if missing:
                raise ValueError(f"no {' or '.join(repr(k) for k in missing)} array")
            images, scale = data["images"], data["scale"]
            labels = data["labels"] if "labels" in data.files else None
    # np.load reports a damaged archive as any of these (BadZipFile is neither OSError nor ValueError).
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        raise UserError(f"{p}: not an image set ({exc}); {IMAGE_SET_HINT}") from None
    _check_image_set(p, images, scale, labels)
    images = images.astype(np.float32) * np.float32(scale)
    return images, None if labels is None else labels.astype(np.int64)


IMAGE_SET_HINT = "pass an .npz with uint8 'images' N x C x H x W, a scalar 'scale' and optional int 'labels'"


def _check_image_set(p: Path, images: np.ndarray, scale: np.ndarray, labels: np.ndarray | None) -> None:
    if images.dtype != np.uint8:
        raise UserError(f"{p}: 'images' is {images.dtype}, not uint8; {IMAGE_SET_HINT}")
    if images.ndim != 4 or 0 in images.shape:
        raise UserError(f"{p}: image set is empty or not N x C x H x W (shape {images.shape}); {IMAGE_SET_HINT}")
    if scale.shape not in ((), (1,)) or not np.issubdtype(scale.dtype, np.number):
        raise UserError(f"{p}: 'scale' is {scale.dtype} of shape {scale.shape}, not a number; {IMAGE_SET_HINT}")
    value = float(scale.reshape(()))
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{p}: 'scale' is {value}, not a positive finite number (1/255 for 8-bit pixels)")
    if labels is None:
        return
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{p}: 'labels' is {labels.dtype} of shape {labels.shape}, not N integers; {IMAGE_SET_HINT}")
    if len(labels) != len(images):
        raise UserError(f"{p}: {len(labels)} labels for {len(images)} images; give one label per image")
    if labels.min() < 0:
        raise UserError(f"{p}: negative label {labels.min()}; labels are class indices 0..classes-1")


def check_images_fit(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray | None,
    input_shape: Sequence[int | str | None],
    model: str,
    *,
    num_classes: int | None = None,
) -> None:
    """Raise UserError unless an image set (N x C x H x W) fits a model input of `input_shape`
    (ints for fixed dims, names or None for dynamic ones) and its labels fit `num_classes`.

    The message names the file, the dimension, what it holds and what `model` expects, so a set
    made for another model is refused before any work rather than failing inside a runtime."""
    p = Path(path)
    if len(input_shape) != 4:
        raise UserError(f"{model}: input is not N x C x H x W (shape {tuple(input_shape)}); pass an image CNN")
    for axis, name in enumerate(("batch", "channels", "height", "width")):
        want = input_shape[axis]
        if axis == 0 or not isinstance(want, int):
            continue
        got = images.shape[axis]
        if got != want:
            raise UserError(
                f"{p}: images have {got} {name} ({_chw(images.shape)}) but {model} takes {want} "
                f"({_chw(input_shape)}); pass an image set made for this model (prepare-data --image-size, "
                "the same data set)"
            )
    if labels is not None and num_classes is not None and len(labels) and labels.max() >= num_classes:
        raise UserError(
            f"{p}: label {labels.max()} is out of range for {model}, which has {num_classes} classes; "
            "pass the image set of the data set the model was trained on"
        )


def _chw(shape: Sequence[int | str | None]) -> str:
    return " x ".join("?" if not isinstance(d, int) else str(d) for d in shape[1:]) + " C x H x W"
