"""PyTorch backend: the frozen model run by torch itself (eager, torch.compile, or CUDA-graph
replay; FP32, FP16 or BF16; CPU or CUDA), the reference a deployed engine is measured against.

Needs the `torch` extra; importing `engines` does not import this package (the registry does, when
the `torch` backend is asked for). The names below are exported lazily, so `engines.torch.options`
(the `build` flags) imports without torch.
"""

from typing import TYPE_CHECKING

from engines.registry import lazy_exports

if TYPE_CHECKING:
    from engines.torch.builder import BACKEND, build_engine
    from engines.torch.options import Options
    from engines.torch.runner import Runner

__all__ = ["BACKEND", "Options", "Runner", "build_engine"]
__getattr__ = lazy_exports(__name__, {"BACKEND": "builder.BACKEND", "Options": "options.Options",
                                      "build_engine": "builder.build_engine", "Runner": "runner.Runner"})  # fmt: skip
