"""ONNX Runtime CPU backend (engines.registry): `Options` and `build_engine` write an engine
directory, `Runner` runs one."""

from engines.onnxruntime.builder import Options, build_engine
from engines.onnxruntime.runner import OnnxRuntimeRunner as Runner

__all__ = ["Options", "Runner", "build_engine"]
