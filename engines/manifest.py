"""The engine manifest (engine_dir/engine.json): what an engine was built from, with what and for
which device; checked before every load so a stale or foreign engine is rebuilt, not trusted."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from engines.artifacts import read_json, sha256_file, write_json
from engines.errors import UserError

ENGINE_MANIFEST_SCHEMA = "mimicnorm-deploy/engine-manifest"
ENGINE_MANIFEST_VERSION = 1
ENGINE_MANIFEST_NAME = "engine.json"
REBUILD_HINT = "rebuild the engine on this device with 'mimicnorm-deploy build'"


@dataclass
class EngineManifest:
    backend: str  # e.g. "onnxruntime-cpu"
    backend_version: str
    model_file: str  # relative to the engine directory
    model_sha256: str  # of the engine's own copy of the model
    precision: str  # "fp32", "fp16" or "int8"
    device: dict  # CPU: cpu_device() (arch, flags, int8_dot_product, name "cpu"); GPU: at least "name"
    build_flags: dict
    session_options: dict
    created: str  # UTC ISO 8601

    def write(self, engine_dir: str | os.PathLike) -> Path:
        return write_json(
            Path(engine_dir) / ENGINE_MANIFEST_NAME,
            ENGINE_MANIFEST_SCHEMA,
            ENGINE_MANIFEST_VERSION,
            dataclasses.asdict(self),
        )

    @classmethod
    def read(cls, engine_dir: str | os.PathLike) -> EngineManifest:
        path = Path(engine_dir) / ENGINE_MANIFEST_NAME
        if not path.is_file():
            raise UserError(f"{engine_dir}: not an engine directory; build one with 'mimicnorm-deploy build'")
        document = read_json(path, ENGINE_MANIFEST_SCHEMA, ENGINE_MANIFEST_VERSION)
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in document]
        if missing:
            raise UserError(f"{path}: engine manifest lacks {', '.join(missing)}; {REBUILD_HINT}")
        return cls(**{name: document[name] for name in names})


def check_engine(
    manifest: EngineManifest,
    engine_dir: str | os.PathLike,
    current_device: dict,
    *,
    backend_version: str | None = None,
) -> None:
    """Raise UserError unless the engine's model file is intact and the engine was built for
    `current_device` (and, when given, the installed `backend_version`)."""
    model_path = Path(engine_dir) / manifest.model_file
    if not model_path.is_file():
        raise UserError(f"{model_path}: engine model file is missing; {REBUILD_HINT}")
    if sha256_file(model_path) != manifest.model_sha256:
        raise UserError(f"{model_path}: engine model file changed since build; {REBUILD_HINT}")
    if backend_version is not None and backend_version != manifest.backend_version:
        raise UserError(
            f"{engine_dir}: engine built for {manifest.backend} {manifest.backend_version}, this machine is "
            f"{manifest.backend} {backend_version}: {REBUILD_HINT}"
        )
    built_for, here = _device_identity(manifest.device), _device_identity(current_device)
    if built_for != here:
        raise UserError(f"{engine_dir}: engine built for {built_for}, this machine is {here}: {REBUILD_HINT}")


def _device_identity(device: dict) -> str:
    # A CPU engine depends on the architecture and on whether INT8 runs on dot-product
    # instructions (which decides if 7-bit weights were needed), not on the exact CPU model;
    # a GPU engine depends on the exact GPU.
    if device.get("name") == "cpu":
        dot = "with" if device.get("int8_dot_product") else "without"
        return f"{device.get('arch', '?')} CPU {dot} INT8 dot product"
    return str(device.get("name", "unknown device"))
