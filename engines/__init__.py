"""Inference engines: build an engine directory from an ONNX file for one backend, load it
back as a `Runner`, benchmark it.

Backends are imported only when used, so importing `engines` (or `engines.artifacts`, as
`calibration` does) never loads onnxruntime or a GPU stack.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from engines.errors import UserError
from engines.manifest import EngineManifest

if TYPE_CHECKING:
    from engines.base import Runner

BACKENDS = ("onnxruntime-cpu",)


def load_runner(engine_dir: str | os.PathLike) -> Runner:
    """Open the engine in `engine_dir` with the runner of the backend that built it."""
    backend = EngineManifest.read(engine_dir).backend
    if backend == "onnxruntime-cpu":
        from engines.onnxruntime import OrtRunner

        return OrtRunner(engine_dir)
    raise UserError(f"{engine_dir}: engine backend {backend!r} is not supported here (known: {', '.join(BACKENDS)})")


def build_engine(
    model_path: str | os.PathLike,
    engine_dir: str | os.PathLike,
    *,
    backend: str = "onnxruntime-cpu",
    **options: Any,
) -> EngineManifest:
    """Build an engine for `backend`; `options` are that backend's builder options."""
    if backend == "onnxruntime-cpu":
        from engines.onnxruntime import build_engine as build_onnxruntime_engine

        return build_onnxruntime_engine(model_path, engine_dir, **options)
    raise UserError(f"backend {backend!r} is not supported (known: {', '.join(BACKENDS)})")
