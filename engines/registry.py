"""The backends: name -> the module that builds and runs its engines, imported only when used.

A backend is one folder under engines/ and one line in BACKENDS. Its package exposes three names:
- `Options`: a dataclass of its build options, every field with a default;
- `build_engine(model_path, engine_dir, options: Options) -> EngineManifest`;
- `Runner`: an engines.base.Runner subclass, constructed as `Runner(engine_dir)`.
Its `options` module holds `Options` and `FLAGS`, the `build` flags that set them
(engines.arguments.Flag), and imports no runtime: the CLI imports it for every backend at startup,
so the package exports its names lazily (`lazy_exports`) and importing `options` loads nothing more.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from engines.errors import UserError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str  # imported by get_backend, never at startup (it may need a GPU stack)
    summary: str  # also the description of its group in `build --help`
    options: str  # its Options and FLAGS; imports no runtime (options_module)


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in [
        BackendSpec("onnxruntime", "engines.onnxruntime", "ONNX Runtime on the CPU: FP32, FP16 and Q/DQ INT8 models",
                    "engines.onnxruntime.options"),
        BackendSpec("tensorrt", "engines.tensorrt", "TensorRT 10/11 on NVIDIA GPUs and Jetsons (incl. DLA); "
                    "docs/TENSORRT.md", "engines.tensorrt.options"),
        BackendSpec("torch", "engines.torch", "PyTorch itself on the frozen model (freeze's .safetensors, not the "
                    "ONNX file): eager, compiled or CUDA graphs", "engines.torch.options"),
    ]
}  # fmt: skip


def _spec(name: str) -> BackendSpec:
    spec = BACKENDS.get(name)
    if spec is None:
        raise UserError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return spec


def get_backend(name: str) -> ModuleType:
    """The module of backend `name`, or a one-line error listing the known ones."""
    return importlib.import_module(_spec(name).module)


def options_module(name: str) -> ModuleType:
    """Backend `name`'s `Options` and `FLAGS`, without its runtime."""
    return importlib.import_module(_spec(name).options)


def backend_options(name: str, **values: Any) -> Any:
    """Backend `name`'s Options with `values` set (the rest at their defaults); a one-line error
    for an option the backend does not have."""
    options_class = options_module(name).Options
    known = [field.name for field in dataclasses.fields(options_class)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"backend {name!r} has no option {', '.join(unknown)}; its options: {', '.join(known)}")
    return options_class(**values)


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A backend package's module `__getattr__` (PEP 562): each exported name imported on first use
    from where `exports` says ("submodule.attribute"), so that importing the package's `options`
    module imports no runtime."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        submodule, attribute = exports[name].rsplit(".", 1)
        return getattr(importlib.import_module(f"{package}.{submodule}"), attribute)

    return __getattr__
