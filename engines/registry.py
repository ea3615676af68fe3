"""The backends: name -> the module that builds and runs its engines, imported only when used.

A backend module exposes three names:
- `Options`: a dataclass of its build options, every field with a default;
- `build_engine(model_path, engine_dir, options: Options) -> EngineManifest`;
- `Runner`: an engines.base.Runner subclass, constructed as `Runner(engine_dir)`.

A new backend is one folder under engines/ and one line in BACKENDS.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from engines.errors import UserError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str  # imported by get_backend, never at startup (it may need a GPU stack)
    summary: str


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in [
        BackendSpec("onnxruntime", "engines.onnxruntime", "ONNX Runtime on the CPU: FP32, FP16 and Q/DQ INT8 models"),
        BackendSpec("tensorrt", "engines.tensorrt", "TensorRT 10/11 on NVIDIA GPUs and Jetsons (incl. DLA)"),
        BackendSpec("torch", "engines.torch", "PyTorch itself on the frozen model: eager, compiled or CUDA graphs"),
    ]
}


def get_backend(name: str) -> ModuleType:
    """The module of backend `name`, or a one-line error listing the known ones."""
    spec = BACKENDS.get(name)
    if spec is None:
        raise UserError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return importlib.import_module(spec.module)


def backend_options(name: str, **values: Any) -> Any:
    """Backend `name`'s Options with `values` set (the rest at their defaults); a one-line error
    for an option the backend does not have."""
    options_class = get_backend(name).Options
    known = [field.name for field in dataclasses.fields(options_class)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"backend {name!r} has no option {', '.join(unknown)}; its options: {', '.join(known)}")
    return options_class(**values)
