"""A workspace of small, valid artifacts for the CLI fuzz and interruption tests, built in seconds
from tiny synthetic models (tests/tiny_onnx.py; an untrained ResNet-20 checkpoint), no training.

`run_cli` runs one command in-process and returns what the contract is about: exit status and
what was printed; `snapshot` fingerprints every file under a directory (hidden ones included,
so a stray temporary file counts as a new file).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tiny_onnx import make_tiny_resnet

from engines.artifacts import record_artifact, save_image_set, write_json
from engines.schemas import TRAIN_REPORT
from mimicnorm_deploy.cli import main

IN_CHANS, SIZE, CLASSES = 1, 8, 3
HAS_TORCH = importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class Workspace:
    root: Path
    model: Path  # FP32 ONNX, 1 x 8 x 8 input, 3 classes, as `export` writes it
    calib: Path  # image set that fits the model (labelled)
    eval: Path
    engine: Path  # ONNX Runtime engine directory of `model`
    run: Path  # a run directory `report` accepts (train report + bench record)
    checkpoint: Path | None  # trained-shape checkpoint (torch only)
    frozen: Path | None  # its frozen twin (torch only)

    def inputs(self) -> list[Path]:
        """Every artifact a command may read: the files the fuzz tests try to destroy."""
        files = [self.model, self.calib, self.eval, self.engine / "engine.json", self.engine / "model.onnx"]
        files += sorted(p for p in self.run.rglob("*") if p.is_file())
        return files + [p for p in (self.checkpoint, self.frozen) if p is not None]


@dataclass
class Outcome:
    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(*args: str | os.PathLike) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in args])
        except SystemExit as exc:  # only --help may exit through argparse
            status = exc.code if isinstance(exc.code, int) else 1
    return Outcome(status, out.getvalue(), err.getvalue())


def image_set(path: Path, n: int = 24, *, in_chans: int = IN_CHANS, size: int = SIZE, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, in_chans, size, size), dtype=np.uint8)
    return save_image_set(path, images, rng.integers(0, CLASSES, n), 1 / 255)


def build_workspace(root: Path) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    model = make_tiny_resnet(root / "model.onnx", in_chans=IN_CHANS, size=SIZE, num_classes=CLASSES)
    calib, eval_set = image_set(root / "calib.npz"), image_set(root / "eval.npz", seed=1)
    # Recorded as the stages that make them would, so the "written by another stage" guard applies.
    record_artifact(root, model, "export")
    for path in (calib, eval_set):
        record_artifact(root, path, "prepare-data")
    engine = root / "engine"
    done = run_cli("build", model, "--out", engine, "--precision", "fp32")
    assert done.status == 0, done.err
    run = _run_dir(root / "run", engine, eval_set)
    checkpoint = frozen = None
    if HAS_TORCH:
        checkpoint, frozen = _checkpoints(root)
    return Workspace(root, model, calib, eval_set, engine, run, checkpoint, frozen)


def _run_dir(run: Path, engine: Path, eval_set: Path) -> Path:
    """A run directory with one model's train report (made up: training is what these tests avoid) and
    its FP32 bench record (written by `bench` itself)."""
    model_dir = run / "mimic"
    model_dir.mkdir(parents=True)
    train_report = {
        "config": {"arch": "tiny", "epochs": 1.0}, "final_test_accuracy": 0.5, "best_test_accuracy": 0.5,
        "activation_memory": {"batch_size": 8, "bytes": 1024, "tensors": 4}, "mean_step_ms": 1.0,
        "step_ms_percentiles": {"p10": 1.0, "p50": 1.0, "p90": 1.0},
    }  # fmt: skip
    write_json(model_dir / "train_report.json", *TRAIN_REPORT, train_report)
    record_artifact(model_dir, model_dir / "train_report.json", "train")
    done = run_cli("bench", engine, "--out", model_dir / "bench" / "fp32.json", "--eval", eval_set,
                   "--batch-sizes", "1", "--duration", "0.01")  # fmt: skip
    assert done.status == 0, done.err
    done = run_cli("report", run)
    assert done.status == 0, done.err
    return run


def _checkpoints(root: Path) -> tuple[Path, Path]:
    from mimicnorm_deploy.training.checkpoint import CheckpointMeta, save_checkpoint

    meta = CheckpointMeta(arch="resnet20", norm="mimic", num_classes=CLASSES, in_chans=IN_CHANS, image_size=SIZE,
                          input_mean=[0.5], input_std=[0.25], classes=[f"c{i}" for i in range(CLASSES)],
                          dataset="synthetic")  # fmt: skip
    checkpoint = save_checkpoint(root / "checkpoint.safetensors", meta.build_model(), meta)
    record_artifact(root, checkpoint, "train")
    frozen = root / "frozen.safetensors"
    done = run_cli("freeze", checkpoint, "--out", frozen)
    assert done.status == 0, done.err
    return checkpoint, frozen


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 (or "dir") for everything under `root`, hidden entries included."""
    entries = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        entries[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return entries
