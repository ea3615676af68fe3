"""Run an ONNX Runtime CPU engine directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.base import Runner, TensorMeta
from engines.cpu import cpu_device, cpu_fingerprint
from engines.errors import UserError
from engines.manifest import EngineManifest, check_engine
from engines.onnxruntime.session import GRAPH_OPTIMIZATION_LEVELS, create_session, tensor_meta

BACKEND = "onnxruntime"


def _check_session_options(options: dict, engine_dir: Path) -> None:
    # They come from a manifest on disk, which may have been edited: checked, not trusted.
    level, threads = options.get("graph_optimization", "all"), options.get("intra_op_threads")
    unknown = set(options) - {"graph_optimization", "intra_op_threads"}
    threads_ok = threads is None or (type(threads) is int and threads > 0)
    if unknown or not isinstance(level, str) or level not in GRAPH_OPTIMIZATION_LEVELS or not threads_ok:
        raise UserError(
            f"{engine_dir}: session options {options} are not valid (graph_optimization one of "
            f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}, intra_op_threads a positive integer or null); rebuild the engine"
        )


class OnnxRuntimeRunner(Runner):
    def __init__(self, engine_dir: str | os.PathLike):
        self.engine_dir = Path(engine_dir)
        self.manifest = EngineManifest.read_for(self.engine_dir, BACKEND)
        check_engine(self.manifest, self.engine_dir, cpu_fingerprint(cpu_device()), backend_version=ort.__version__)
        self.model_path = self.engine_dir / self.manifest.engine_file
        _check_session_options(self.manifest.backend_options, self.engine_dir)
        self._session: ort.InferenceSession | None = None
        self._inputs: list[TensorMeta] = []
        self._outputs: list[TensorMeta] = []

    def _activate(self) -> None:
        self._session = create_session(self.model_path, **self.manifest.backend_options)
        self._inputs = [tensor_meta(arg) for arg in self._session.get_inputs()]
        self._outputs = [tensor_meta(arg) for arg in self._session.get_outputs()]

    def _deactivate(self) -> None:
        self._session = None

    @property
    def inputs(self) -> list[TensorMeta]:
        self._require_active()
        return self._inputs

    @property
    def outputs(self) -> list[TensorMeta]:
        self._require_active()
        return self._outputs

    def _require_active(self) -> None:
        if not self.is_active:
            raise RuntimeError(f"runner for {self.engine_dir} is not active; use it as a context manager")

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(None, feeds)
        return {meta.name: value for meta, value in zip(self._outputs, values, strict=True)}

    def memory(self) -> dict[str, int]:
        # ONNX Runtime's Python API has no query for its CPU arena, so only the model size is
        # known here; process peak RSS (engines.bench.peak_rss_fresh_process) covers the rest.
        return {"model_file_bytes": self.model_path.stat().st_size}
