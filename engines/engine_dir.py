"""Writing an engine directory all at once: staged beside its final place, swapped in on success,
deleted on failure, so a failed build never leaves a half-written engine (nor loses the old one)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from engines.errors import UserError
from engines.manifest import ENGINE_MANIFEST_NAME


def check_replaceable(engine_dir: Path) -> None:
    """Replacing a directory deletes it: only do that to an engine or an empty directory."""
    if engine_dir.is_file():
        raise UserError(f"{engine_dir}: is a file; pass a directory path for the engine")
    if engine_dir.is_dir() and any(engine_dir.iterdir()) and not (engine_dir / ENGINE_MANIFEST_NAME).is_file():
        raise UserError(f"{engine_dir}: exists and is not an engine directory; pass a new or empty directory")


@contextlib.contextmanager
def staged_engine_dir(engine_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `engine_dir`, on failure it is removed."""
    target = Path(engine_dir)
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would follow the engine into place.
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    try:
        yield staging
        _swap_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _swap_into_place(staging: Path, engine_dir: Path) -> None:
    if not engine_dir.exists():
        os.replace(staging, engine_dir)
        return
    # A directory cannot be renamed onto a non-empty one: move the old engine aside first and
    # put it back if the new one cannot take its place.
    retired = engine_dir.parent / f".{engine_dir.name}.{uuid.uuid4().hex}.old"
    os.replace(engine_dir, retired)
    try:
        os.replace(staging, engine_dir)
    except OSError:
        os.replace(retired, engine_dir)
        raise
    shutil.rmtree(retired)
