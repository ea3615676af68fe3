"""The TensorRT backend (TensorRT 10 and 11, desktop GPUs and Jetsons incl. DLA).

- `options`: `Options` (the build options), their `build` flags and the choice of build path per
  TensorRT version;
- `builder`: `build_engine(model, engine_dir, options)` -> engine directory + manifest;
- `runner`: `Runner(engine_dir)`, execute_async_v3 on a CUDA stream with CUDA-event timing;
- `calibrator`: the TensorRT 10 calibrator that only reads our calibration cache;
- `cuda`: one small interface over cuda-python or pycuda; `device`: device fingerprint, portability;
- `api`: finding TensorRT (a one-line error saying how to install it), its major version, the logger.

Nothing here imports tensorrt or a CUDA binding at module level: `engines` imports anywhere. The
names below are exported lazily (engines.registry.lazy_exports), like every backend's.
Facts about TensorRT this relies on, with NVIDIA's sources: docs/TENSORRT.md.
"""

from typing import TYPE_CHECKING

from engines.registry import lazy_exports

if TYPE_CHECKING:
    from engines.tensorrt.builder import build_engine
    from engines.tensorrt.options import Options
    from engines.tensorrt.runner import Runner

__all__ = ["Options", "Runner", "build_engine"]
__getattr__ = lazy_exports(__name__, {"Options": "options.Options", "build_engine": "builder.build_engine",
                                      "Runner": "runner.Runner"})  # fmt: skip
