"""ONNX Runtime CPU backend (engines.registry): `Options` and `build_engine` write an engine
directory, `Runner` runs one. Exported lazily: `options` (the CLI's flags) loads without onnxruntime."""

from typing import TYPE_CHECKING

from engines.registry import lazy_exports

if TYPE_CHECKING:
    from engines.onnxruntime.builder import build_engine
    from engines.onnxruntime.options import Options
    from engines.onnxruntime.runner import OnnxRuntimeRunner as Runner

__all__ = ["Options", "Runner", "build_engine"]
__getattr__ = lazy_exports(__name__, {"Options": "options.Options", "build_engine": "builder.build_engine",
                                      "Runner": "runner.OnnxRuntimeRunner"})  # fmt: skip
