"""Inference engines: build an engine directory from an ONNX file with one backend, load it back
as a `Runner`, benchmark it.

Backends (engines.registry.BACKENDS) are imported only when used, so importing `engines` (or
`engines.artifacts`, as `calibration` does) never loads onnxruntime or a GPU stack.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from engines.manifest import EngineManifest
from engines.registry import get_backend

if TYPE_CHECKING:
    from engines.base import Runner

DEFAULT_BACKEND = "onnxruntime"


def load_runner(engine_dir: str | os.PathLike) -> Runner:
    """The (inactive) runner of the backend that built the engine in `engine_dir`."""
    return get_backend(EngineManifest.read(engine_dir).backend).Runner(engine_dir)


def build_engine(
    model_path: str | os.PathLike,
    engine_dir: str | os.PathLike,
    *,
    backend: str = DEFAULT_BACKEND,
    options: Any = None,
) -> EngineManifest:
    """Build an engine with `backend`; `options` is that backend's Options (None: its defaults)."""
    module = get_backend(backend)
    if options is None:
        options = module.Options()
    elif not isinstance(options, module.Options):
        raise TypeError(f"options for backend {backend!r} must be its Options, not {type(options).__name__}")
    return module.build_engine(model_path, engine_dir, options)
