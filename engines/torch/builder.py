"""Build a torch engine directory: the frozen model's safetensors file, proven to run in its
precision and layout on this device, plus its manifest.

PyTorch has no serialized engine that loads without unpickling (torch.export archives pickle
their weights), so the "engine" is the frozen weights and the options they run with. A compiled
module or captured CUDA graph belongs to a process: the runner makes it on the first inference of
each batch size (torch.compile takes minutes on a CPU; a benchmark's warm-up absorbs it).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch

from engines.artifacts import now_utc, sha256_file
from engines.engine_dir import check_replaceable, staged_engine_dir
from engines.errors import UserError
from engines.manifest import EngineManifest
from engines.torch.device import device_entry, fingerprint, resolve_device
from engines.torch.model import grad_mode, load_frozen, make_forward, read_frozen_meta
from engines.torch.options import Options

BACKEND = "torch"
ENGINE_MODEL_FILE = "model.safetensors"
TARGETS = {"cpu": "torch-cpu", "cuda": "torch-cuda"}  # engines.targets names, by torch device type
SMOKE_BATCH = 2


def build_engine(
    model_path: str | os.PathLike, engine_dir: str | os.PathLike, options: Options | None = None
) -> EngineManifest:
    """Copy the frozen model into `engine_dir` (replacing an engine already there), run it once
    eagerly in the options' precision and layout on their device, and write the manifest."""
    model_path, engine_dir = Path(model_path), Path(engine_dir)
    options = options or Options()
    options.validate()
    device = resolve_device(options.device)
    check_replaceable(engine_dir, model_path)
    meta = read_frozen_meta(model_path)
    with staged_engine_dir(engine_dir) as staging:
        staged_model = staging / ENGINE_MODEL_FILE
        shutil.copyfile(model_path, staged_model)
        _smoke_run(staged_model, device, options, (SMOKE_BATCH, meta.in_chans, meta.image_size, meta.image_size))
        entry = device_entry(device)
        manifest = EngineManifest(
            backend=BACKEND,
            backend_version=torch.__version__,
            target=TARGETS[device.type],
            precision=options.precision,
            engine_file=ENGINE_MODEL_FILE,
            engine_sha256=sha256_file(staged_model),
            model_sha256=sha256_file(model_path),
            source_model=str(model_path.resolve()),
            device_fingerprint=fingerprint(entry),
            device=entry,
            backend_options=dataclasses.asdict(options),
            build_flags={"arch": meta.arch, "frozen_from": meta.frozen_from},
            created=now_utc(),
        )
        manifest.write(staging)
    return manifest


def _smoke_run(model_path: Path, device: torch.device, options: Options, shape: tuple[int, ...]) -> None:
    # What fails here (a precision the device has no kernels for, an overflow) would otherwise
    # fail at the first inference, far from the options that caused it. Eager: compiling here
    # would cost minutes and be thrown away with this process.
    eager = dataclasses.replace(options, mode="eager")
    forward = make_forward(load_frozen(model_path, device, eager), eager)
    try:
        with grad_mode(eager):
            logits = forward(torch.rand(shape, device=device))
    # A kernel missing for a dtype is a RuntimeError or NotImplementedError, as are CUDA errors.
    except (RuntimeError, NotImplementedError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"{model_path.name}: torch {torch.__version__} cannot run it in {options.precision} on {device} "
            f"({reason}); choose another precision"
        ) from None
    if not bool(torch.isfinite(logits).all()):
        raise UserError(
            f"{model_path.name}: non-finite logits in {options.precision} on {device}; "
            "the model overflows this precision, build it as fp32"
        )
