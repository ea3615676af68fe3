"""Bundles: what one target needs from a run directory, in one checked archive, and its safe unpacking.

`write_bundle` packs, for each model of a run, the files its target builds engines from: the FP32
ONNX model, and for every calibration made for the target's INT8 encoding its Q/DQ model, its
precision plan, its TensorRT 10 calibration cache (+ sidecar) and its pure FP16 model; optionally
the labelled test set; and the device-side script. `bundle.json` at the archive's root lists every
file with its sha256 and size, and every engine to build (which model, cache and plan).

`extract_bundle` trusts nothing in the archive: members must be plain files under relative paths
(no absolute path, no `..`, no link or device), exactly the files the manifest lists, each with
its recorded sha256. Everything is extracted into a staging directory beside the destination and
renamed into place only when every check has passed, so a corrupted or incomplete bundle leaves
nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.artifacts import atomic_path, now_utc, read_json, sha256_file
from engines.errors import UserError
from engines.schemas import BUNDLE, CALIBRATION
from engines.targets import Target, get_target
from mimicnorm_deploy.layout import NORMS_COMPARED, RunLayout

BUNDLE_MANIFEST_NAME = "bundle.json"
DEVICE_SCRIPTS = ("run.sh", "setup.sh")  # scripts/jetson/, carried at the bundle's root under scripts/
SCRIPT_DIR = Path(__file__).resolve().parent.parent / "scripts" / "jetson"
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class BundleEngine:
    """One engine the device builds: `model` (and `calibration_cache`, `plan`) are bundle paths."""

    name: str  # "<norm>/<variant>", also where the device writes its engine and bench files
    kind: str  # "fp32", "fp16", "qdq" (Q/DQ model) or "int8-cache" (FP32 model + TensorRT 10 cache)
    model: str
    calibration_cache: str | None = None
    plan: str | None = None


# --- packing -----------------------------------------------------------------------------------


def plan_bundle(run_dir: str | os.PathLike, target: Target, *, test_set: bool = False) -> tuple[
        dict[str, Path], list[BundleEngine]]:  # fmt: skip
    """The files (bundle path -> source path) and engines a bundle of `run_dir` for `target` holds."""
    layout = RunLayout(Path(run_dir))
    files: dict[str, Path] = {}
    engines: list[BundleEngine] = []
    for norm in NORMS_COMPARED:
        fp32 = layout.onnx(norm)
        if not fp32.is_file():
            continue
        files[f"{norm}/{fp32.name}"] = fp32
        if target.device != "dla":  # DLA runs FP16 and INT8 only: an FP32 engine would all fall back to the GPU
            engines.append(BundleEngine(f"{norm}/fp32", "fp32", f"{norm}/{fp32.name}"))
        for record_path in sorted(layout.model_dir(norm).glob("*.json")):
            record = _calibration_record(record_path)
            if record is None or get_target(record["target"]).int8_encoding != target.int8_encoding:
                continue
            engines += _calibrated_engines(norm, record_path, record, target, files)
    if not engines:
        raise UserError(f"{run_dir}: no exported model found (expected <norm>/model.onnx); run 'export' first")
    if test_set:
        if not layout.test_set.is_file():
            raise UserError(f"{layout.test_set}: no test set to bundle; run 'prepare-data' or leave out --test-set")
        files["data/test.npz"] = layout.test_set
    if target.backend == "tensorrt":
        for script in DEVICE_SCRIPTS:
            source = SCRIPT_DIR / script
            if not source.is_file():
                raise UserError(f"{source}: device script missing; bundle from a checkout of mimicnorm-deploy")
            files[f"scripts/{script}"] = source
    return files, engines


def _calibration_record(path: Path) -> dict[str, Any] | None:
    # The model directory also holds plans, ranges, sidecars and the run manifest: only calibration
    # records (schema CALIBRATION) describe models to bundle.
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict) or document.get("schema") != CALIBRATION[0]:
        return None
    return read_json(path, *CALIBRATION)


def _calibrated_engines(norm: str, record_path: Path, record: dict[str, Any], target: Target,
                        files: dict[str, Path]) -> list[BundleEngine]:  # fmt: skip
    """The engines one calibration record gives a target, adding their files to `files`."""
    directory = record_path.parent
    qdq = record_path.with_suffix(".onnx")
    variant = qdq.stem.removeprefix("model.")
    plan = qdq.with_suffix(".plan.json")
    plan_name = None
    if plan.is_file():
        plan_name = f"{norm}/{plan.name}"
        files[plan_name] = plan
    files[f"{norm}/{qdq.name}"] = _existing(qdq, record_path)
    engines = [BundleEngine(f"{norm}/{variant}", "qdq", f"{norm}/{qdq.name}", plan=plan_name)]
    if target.backend != "tensorrt":
        return engines
    if record.get("trt_cache"):
        cache = _existing(directory / Path(record["trt_cache"]).name, record_path)
        sidecar = _existing(Path(f"{cache}.json"), record_path)
        files[f"{norm}/{cache.name}"], files[f"{norm}/{sidecar.name}"] = cache, sidecar
        engines.append(BundleEngine(f"{norm}/{variant}-trt10-cache", "int8-cache", f"{norm}/model.onnx",
                                    calibration_cache=f"{norm}/{cache.name}", plan=plan_name))  # fmt: skip
    if record.get("fp16"):
        fp16 = _existing(directory / Path(record["fp16"]).name, record_path)
        files[f"{norm}/{fp16.name}"] = fp16
        engines.append(BundleEngine(f"{norm}/{fp16.stem.removeprefix('model.')}", "fp16", f"{norm}/{fp16.name}"))
    return engines


def _existing(path: Path, record_path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: listed by {record_path.name} but missing; re-run 'mimicnorm-deploy calibrate'")
    return path


def write_bundle(run_dir: str | os.PathLike, target_name: str, out: str | os.PathLike, *,
                 test_set: bool = False) -> dict[str, Any]:  # fmt: skip
    """Write the .tar.gz bundle of `run_dir` for `target_name` atomically; return its manifest."""
    target = get_target(target_name)
    files, engines = plan_bundle(run_dir, target, test_set=test_set)
    return write_archive(out, files, {"run_dir": Path(run_dir).resolve().name, "target": asdict(target),
                                      "engines": [asdict(engine) for engine in engines]})  # fmt: skip


def write_archive(out: str | os.PathLike, files: dict[str, Path], fields: dict[str, Any]) -> dict[str, Any]:
    """A .tar.gz of `files` (archive path -> source) led by bundle.json: `fields`, and every file's
    sha256 and size. Written atomically; `extract_bundle` checks and unpacks it."""
    manifest = {
        "schema": BUNDLE[0],
        "schema_version": BUNDLE[1],
        "created": now_utc(),
        **fields,
        "files": {name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
                  for name, path in sorted(files.items())},  # fmt: skip
    }
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as archive:
        _add_bytes(archive, BUNDLE_MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
        for name, path in sorted(files.items()):
            info = archive.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            with open(path, "rb") as fh:
                archive.addfile(info, fh)
    return manifest


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    archive.addfile(info, io.BytesIO(data))


# --- unpacking ---------------------------------------------------------------------------------


def extract_bundle(bundle: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Any]:
    """Check and extract `bundle` into the new directory `dest`, all or nothing; return its manifest."""
    source, target = Path(bundle), Path(dest)
    if not source.is_file():
        raise UserError(f"{source}: no such bundle; pass the .tar.gz written by 'mimicnorm-deploy bundle'")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target}: already exists and is not an empty directory; choose a new --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".unbundle", dir=target.parent))
    try:
        manifest = _extract_checked(source, staging)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp made it private; the destination is an ordinary directory
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _extract_checked(source: Path, staging: Path) -> dict[str, Any]:
    try:
        with tarfile.open(source, "r:gz") as archive:
            written = _extract_members(source, archive, staging)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"{source}: damaged or not a bundle ({exc.__class__.__name__}: {exc}); copy it again") from None
    manifest = _read_manifest(source, staging)
    listed = set(manifest["files"]) | {BUNDLE_MANIFEST_NAME}
    if written - listed:
        raise UserError(f"{source}: holds {sorted(written - listed)[0]}, which bundle.json does not list; rebuild it")
    if listed - written:
        raise UserError(f"{source}: incomplete, {sorted(listed - written)[0]} is missing; copy the whole bundle again")
    for name, entry in manifest["files"].items():
        if sha256_file(staging / name) != entry["sha256"]:
            raise UserError(f"{source}: {name} does not match its sha256 in bundle.json (corrupted); copy it again")
    return manifest


def _extract_members(source: Path, archive: tarfile.TarFile, staging: Path) -> set[str]:
    written: set[str] = set()
    for member in archive:
        name = _safe_name(source, member)
        if name in written:
            raise UserError(f"{source}: {name} appears twice in the archive; rebuild the bundle")
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        reader = archive.extractfile(member)
        with reader, open(path, "xb") as fh:
            shutil.copyfileobj(reader, fh, _READ_CHUNK)
        os.chmod(path, 0o755 if member.mode & 0o100 else 0o644)
        written.add(name)
    return written


def _safe_name(source: Path, member: tarfile.TarInfo) -> str:
    """The member's path if it is a plain file strictly inside the destination; a UserError otherwise."""
    name = member.name
    if not member.isfile():
        what = "link" if member.issym() or member.islnk() else "directory" if member.isdir() else "special file"
        raise UserError(f"{source}: refusing {name!r}, a {what}; a bundle holds plain files only")
    if name.startswith("/") or posixpath.isabs(name) or "\\" in name or ":" in name.split("/")[0]:
        raise UserError(f"{source}: refusing absolute path {name!r}; a bundle holds relative paths only")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UserError(f"{source}: refusing path {name!r} (empty, '.' or '..' part); it could escape the destination")
    return name


def _read_manifest(source: Path, staging: Path) -> dict[str, Any]:
    path = staging / BUNDLE_MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{source}: no {BUNDLE_MANIFEST_NAME} inside; pass a bundle from 'mimicnorm-deploy bundle'")
    manifest = read_json(path, *BUNDLE)
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(e, dict) and "sha256" in e for e in files.values()):
        raise UserError(f"{source}: {BUNDLE_MANIFEST_NAME} has no valid file list; rebuild the bundle")
    for name in files:
        if name == BUNDLE_MANIFEST_NAME or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
            raise UserError(f"{source}: {BUNDLE_MANIFEST_NAME} lists an unsafe path {name!r}; rebuild the bundle")
    return manifest
