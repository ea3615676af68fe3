"""Build an ONNX Runtime CPU engine directory: the model, checked to load, plus its manifest.

ONNX Runtime has no serialized engine; the "engine" is the model file and the session options
it must run with, pinned by a manifest so that `bench` and `evaluate` run exactly what was built.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from engines.artifacts import now_utc, sha256_file
from engines.cpu import cpu_device, cpu_fingerprint
from engines.engine_dir import check_replaceable, staged_engine_dir
from engines.errors import UserError
from engines.manifest import EngineManifest
from engines.onnx_model import graph_precision, load_onnx
from engines.onnxruntime.options import PRECISIONS, Options
from engines.onnxruntime.runner import BACKEND
from engines.onnxruntime.session import GRAPH_OPTIMIZATION_LEVELS, create_session

if TYPE_CHECKING:
    import onnx

ENGINE_MODEL_FILE = "model.onnx"
TARGET = "cpu"  # the one target (engines.targets) this backend builds for
PROTOBUF_LIMIT_BYTES = 2**31 - 1


def build_engine(model_path: str | os.PathLike, engine_dir: str | os.PathLike, options: Options) -> EngineManifest:
    """Copy `model_path` into `engine_dir` (replacing an engine already there), prove ONNX
    Runtime loads it with these options, and write the manifest. Nothing is left on failure."""
    model_path, engine_dir = Path(model_path), Path(engine_dir)
    _check_options(options)
    check_replaceable(engine_dir, model_path)
    model = load_onnx(model_path, load_external_data=False, check=False)  # ONNX Runtime's load is the check
    found = graph_precision(model)
    if options.precision is not None and found != options.precision:
        raise UserError(
            f"{model_path}: is an {found} model but precision {options.precision!r} was asked; "
            f"build it as {found} or pass the {options.precision} model"
        )
    with staged_engine_dir(engine_dir) as staging:
        staged_model = staging / ENGINE_MODEL_FILE
        if _uses_external_data(model):
            _write_self_contained(model_path, staged_model)
        else:
            shutil.copyfile(model_path, staged_model)
        _prove_loadable(model_path, staged_model, options)
        device = cpu_device()
        manifest = EngineManifest(
            backend=BACKEND,
            backend_version=ort.__version__,
            target=TARGET,
            precision=found,
            engine_file=ENGINE_MODEL_FILE,
            engine_sha256=sha256_file(staged_model),
            model_sha256=sha256_file(model_path),
            source_model=str(model_path.resolve()),
            device_fingerprint=cpu_fingerprint(device),
            device=device,
            backend_options=options.session_options(),
            # ONNX Runtime has no build step of its own: the engine is the model file itself.
            build_flags={},
            created=now_utc(),
        )
        manifest.write(staging)
    return manifest


def _check_options(options: Options) -> None:
    if options.precision is not None and options.precision not in PRECISIONS:
        raise UserError(f"precision {options.precision!r} is not one of {', '.join(PRECISIONS)}")
    if options.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
        raise UserError(
            f"graph optimization {options.graph_optimization!r} is not one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
        )
    if options.intra_op_threads is not None and options.intra_op_threads < 1:
        raise UserError(
            f"intra_op_threads must be >= 1 (or unset for ONNX Runtime's default), got {options.intra_op_threads}"
        )


def _prove_loadable(model_path: Path, staged_model: Path, options: Options) -> None:
    try:
        create_session(staged_model, **options.session_options())
    # ONNX Runtime raises a different pybind class per failure (Fail, InvalidGraph,
    # NotImplemented, ...) with no common public base; each one means "cannot load".
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{model_path}: ONNX Runtime {ort.__version__} cannot load it ({reason}); "
            "re-export with an opset and operators this ONNX Runtime supports"
        ) from None




def _uses_external_data(model: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(init) for init in model.graph.initializer)


def _write_self_contained(model_path: Path, target: Path) -> None:
    # External data files sit next to the source model under names the model records; inlining
    # them makes the engine one file whose sha256 pins all weights.
    import onnx

    model = load_onnx(model_path, check=False)
    if model.ByteSize() > PROTOBUF_LIMIT_BYTES:
        raise UserError(f"{model_path}: weights exceed the 2 GiB single-file ONNX limit; this backend needs one file")
    onnx.save(model, os.fspath(target))
