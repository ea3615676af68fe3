"""Writing an engine directory all at once: staged beside its final place, swapped in on success,
deleted on failure, so a failed build never leaves a half-written engine (nor loses the old one)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from engines.paths import StageIO


def check_replaceable(engine_dir: Path, model_path: str | os.PathLike | None = None) -> None:
    """Replacing a directory deletes it: only do that to an engine or an empty directory, never one
    holding the model (engines.paths has the rules every stage follows)."""
    restore_interrupted_swap(engine_dir)
    hint = "pass the ONNX model (or checkpoint) to build the engine from"
    io = StageIO("build")
    if model_path is not None:
        io.input_file(model_path, hint)
    io.output_dir(engine_dir, "engine directory", replaces="engine directory")


def restore_interrupted_swap(engine_dir: Path) -> None:
    """A build killed between the two renames of _swap_into_place leaves the previous engine aside
    under a hidden name and none in place: put it back before anything else."""
    if engine_dir.exists():
        return
    retired = sorted(engine_dir.parent.glob(f".{engine_dir.name}.*.old"), key=lambda p: p.stat().st_mtime)
    if retired and retired[-1].is_dir():
        os.replace(retired[-1], engine_dir)


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
