"""Finding the installed TensorRT and telling its generation apart (docs/TENSORRT.md section 1).

Every module of this backend imports `tensorrt` inside the functions that use it (`import
tensorrt as trt`, after `require_tensorrt()`), so `engines` imports anywhere and mypy checks each
call against NVIDIA's published API (scripts/typecheck.sh). Without TensorRT a build is a one-line
error saying how to get it. TensorRT 11 builds strongly typed networks only (no INT8/FP16 builder
flags, no calibrators); TensorRT 10 builds both kinds.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from engines.errors import UserError

INSTALL_HINT = (
    "TensorRT is not installed; on a Jetson install JetPack's python3-libnvinfer "
    "(sudo apt-get install python3-libnvinfer), on a desktop `pip install tensorrt`"
)
SUPPORTED_MAJORS = (10, 11)


def require_tensorrt() -> None:
    """Raise a one-line UserError saying how to install TensorRT unless `import tensorrt` works."""
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def version_tuple(version: str) -> tuple[int, int, int]:
    """'10.3.0.30' -> (10, 3, 0)."""
    major, minor, patch = ([int(part) if part.isdigit() else 0 for part in version.split(".")[:3]] + [0, 0, 0])[:3]
    return major, minor, patch


def tensorrt_major() -> int:
    """The installed TensorRT's major version, refusing the ones this backend was not written for."""
    require_tensorrt()
    import tensorrt as trt

    major = version_tuple(trt.__version__)[0]
    if major not in SUPPORTED_MAJORS:
        raise UserError(
            f"TensorRT {trt.__version__} is not supported (this backend builds with TensorRT "
            f"{' or '.join(map(str, SUPPORTED_MAJORS))}); install one of those"
        )
    return major


def dims(shape: Any) -> list[int]:
    """A TensorRT Dims as a list (Dims indexes like a sequence but declares no __iter__)."""
    return [int(shape[i]) for i in range(len(shape))]


def one_line(message: str) -> str:
    """TensorRT's messages can span lines; a UserError is one."""
    return " ".join(str(message).split())


def make_logger() -> Any:
    """A TensorRT logger that keeps the errors (for the one-line UserError) and shows warnings."""
    import tensorrt as trt

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 trampolines need the base initialised explicitly
            self.errors: list[str] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(one_line(msg))
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR, trt.ILogger.WARNING):
                print(f"tensorrt: {one_line(msg)}", file=sys.stderr)

        def last_error(self, default: str) -> str:
            return self.errors[-1] if self.errors else default

    return Logger()
