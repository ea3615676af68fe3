"""The engine manifest (engine_dir/engine.json): what an engine was built from, by which backend,
for which target and device; checked before every load so a stale or foreign engine is rebuilt,
not trusted. The same fields for every backend; what only one backend knows sits in
`backend_options` (how the runner must run it), `build_flags` and `device`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from engines.artifacts import read_json, sha256_file, write_json
from engines.errors import UserError
from engines.schemas import ENGINE_MANIFEST

ENGINE_MANIFEST_NAME = "engine.json"
REBUILD_HINT = "rebuild the engine on this device with 'mimicnorm-deploy build'"
PRECISIONS = ("fp32", "fp16", "int8", "plan")


@dataclass
class EngineManifest:
    backend: str  # a name in engines.registry.BACKENDS
    backend_version: str
    target: str  # a name in engines.targets.TARGETS
    precision: str  # one of PRECISIONS; "plan": mixed precision from a precision plan (plan_sha256)
    engine_file: str  # what the runner loads, relative to the engine directory
    engine_sha256: str
    model_sha256: str  # of the ONNX model the engine was built from
    source_model: str  # that model's path at build time (informational)
    device_fingerprint: str  # what the engine is bound to: loading elsewhere asks for a rebuild
    device: dict  # backend-specific details (CPU: engines.cpu.cpu_device(); GPU: name, compute capability...)
    backend_options: dict  # the backend's Options the runner must reproduce (ONNX Runtime: session options)
    build_flags: dict  # backend-specific build details (informational)
    created: str  # UTC ISO 8601
    plan_sha256: str | None = None  # the precision plan's, when precision is "plan"

    def write(self, engine_dir: str | os.PathLike) -> Path:
        return write_json(Path(engine_dir) / ENGINE_MANIFEST_NAME, *ENGINE_MANIFEST, dataclasses.asdict(self))

    @classmethod
    def read(cls, engine_dir: str | os.PathLike) -> EngineManifest:
        path = Path(engine_dir) / ENGINE_MANIFEST_NAME
        if not path.is_file():
            raise UserError(f"{engine_dir}: not an engine directory; build one with 'mimicnorm-deploy build'")
        document = read_json(path, *ENGINE_MANIFEST, hint=REBUILD_HINT)
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in document and f.default is dataclasses.MISSING]
        if missing:
            raise UserError(f"{path}: engine manifest lacks {', '.join(missing)}; {REBUILD_HINT}")
        _check_field_types(cls, document, path)
        return cls(**{f.name: document[f.name] for f in fields if f.name in document})

    @classmethod
    def read_for(cls, engine_dir: str | os.PathLike, backend: str) -> EngineManifest:
        """The manifest of an engine that `backend`'s runner is about to open; another backend's
        engine is a one-line error."""
        manifest = cls.read(engine_dir)
        if manifest.backend != backend:
            raise UserError(
                f"{engine_dir}: a {manifest.backend} engine, not {backend}; load it with engines.load_runner"
            )
        return manifest


# JSON types of the manifest's annotated fields; checked on read, as a hand-edited manifest with
# the wrong type would otherwise fail deep inside a runner.
_JSON_TYPES = {"str": str, "dict": dict, "list": list, "int": int, "float": (int, float), "bool": bool}


def _check_field_types(cls: type, document: dict, path: Path) -> None:
    for field in dataclasses.fields(cls):
        if field.name not in document:
            continue
        annotation = str(field.type)
        value = document[field.name]
        expected = _JSON_TYPES.get(annotation.split("|")[0].split("[")[0].strip())
        if value is None and "None" in annotation:
            continue
        wrong = expected is not None and (
            not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool)
        )
        if wrong:
            raise UserError(f"{path}: manifest field '{field.name}' is {value!r}, not {annotation}; {REBUILD_HINT}")


def check_engine(
    manifest: EngineManifest,
    engine_dir: str | os.PathLike,
    device_fingerprint: str,
    *,
    backend_version: str | None = None,
) -> None:
    """Raise UserError unless the engine file is intact and the engine was built for the device
    whose fingerprint is `device_fingerprint` (and, when given, the installed `backend_version`)."""
    engine_path = Path(engine_dir) / manifest.engine_file
    if not engine_path.is_file():
        raise UserError(f"{engine_path}: engine file is missing; {REBUILD_HINT}")
    if sha256_file(engine_path) != manifest.engine_sha256:
        raise UserError(f"{engine_path}: engine file changed since build; {REBUILD_HINT}")
    if backend_version is not None and backend_version != manifest.backend_version:
        raise UserError(
            f"{engine_dir}: engine built for {manifest.backend} {manifest.backend_version}, this machine is "
            f"{manifest.backend} {backend_version}: {REBUILD_HINT}"
        )
    if manifest.device_fingerprint != device_fingerprint:
        raise UserError(
            f"{engine_dir}: engine built for {manifest.device_fingerprint}, this machine is {device_fingerprint}: "
            f"{REBUILD_HINT}"
        )
