"""ONNX Runtime CPU backend: `build_engine` writes an engine directory, `OrtRunner` runs one."""

from engines.onnxruntime.builder import build_engine
from engines.onnxruntime.runner import BACKEND, OrtRunner

__all__ = ["BACKEND", "OrtRunner", "build_engine"]
