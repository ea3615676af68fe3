"""The pipeline's stages as functions over files: what the CLI commands and the demo call.

Each stage checks its inputs against the manifest of the directory they sit in, does its work
through the library API, and records its outputs (sha256, inputs' hashes, parameters, versions)
in the manifest of the directory it wrote to. Modules that need torch are imported inside the
stages that need them, so `calibrate`, `build`, `bench` and `report` run on a Jetson without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.artifacts import load_image_set, record_artifact, save_image_set, verify_artifact, write_json
from engines.errors import UserError
from mimicnorm_deploy.schemas import BENCH, CALIBRATION

Progress = Callable[[str], None]

# Targets a Q/DQ model is written for: their INT8 arithmetic decides the weight range.
TARGETS = ("ort-cpu", "tensorrt")


def _record(path: str | os.PathLike, stage: str, inputs: list[str | os.PathLike], params: dict[str, Any]) -> None:
    record_artifact(Path(path).parent, path, stage, inputs=inputs, params=params)


def _verified(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file():
        verify_artifact(p.parent, p)
    return p


# --- data ---------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    calibration: str
    test: str
    calibration_images: int
    test_images: int


def prepare_data(dataset, out_dir: str | os.PathLike, *, calibration_count: int = 512, seed: int = 0) -> PreparedData:
    """Write the deterministic calibration sample (training split) and the labelled test split."""
    from mimicnorm_deploy.data import calibration_indices

    out = Path(out_dir)
    index = calibration_indices(len(dataset.train_images), calibration_count, seed)
    calib = save_image_set(out / "calib.npz", dataset.train_images[index], dataset.train_labels[index], 1 / 255)
    test = save_image_set(out / "test.npz", dataset.test_images, dataset.test_labels, 1 / 255)
    params = {"dataset": dataset.name, "calibration_count": len(index), "seed": seed, "split": "train"}
    _record(calib, "prepare-data", [], params)
    _record(test, "prepare-data", [], {"dataset": dataset.name, "split": "test"})
    return PreparedData(str(calib), str(test), len(index), len(dataset.test_images))


# --- train / freeze / export (torch) -------------------------------------------------------------


def train_stage(config, dataset, out_dir: str | os.PathLike, progress: Progress = print, resume: bool = False):
    """Train (or, with `resume`, continue the interrupted run in `out_dir`); under torchrun only
    rank 0 records the artifacts, as only rank 0 writes them."""
    from mimicnorm_deploy.distributed import is_main_process
    from mimicnorm_deploy.train import CHECKPOINT_FILE, METRICS_FILE, TRAIN_REPORT_FILE, TRAIN_STATE_FILE, train

    result = train(config, dataset, out_dir, progress, resume_from=out_dir if resume else None)
    if is_main_process():
        for name in (CHECKPOINT_FILE, METRICS_FILE, TRAIN_REPORT_FILE, TRAIN_STATE_FILE):
            _record(Path(out_dir) / name, "train", [], {**asdict(config), "dataset": dataset.name})
    return result


def freeze_stage(checkpoint: str | os.PathLike, out_path: str | os.PathLike, check_images: str | None = None):
    import torch

    from mimicnorm_deploy.freeze import freeze_checkpoint

    images = None
    if check_images is not None:
        images = torch.from_numpy(load_image_set(_verified(check_images))[0][:256])
    report = freeze_checkpoint(_verified(checkpoint), out_path, images)
    inputs = [checkpoint] + ([check_images] if check_images else [])
    _record(out_path, "freeze", inputs, {"equivalence": asdict(report)})
    return report


def export_stage(frozen: str | os.PathLike, out_path: str | os.PathLike):
    from mimicnorm_deploy.export import export_onnx

    report = export_onnx(_verified(frozen), out_path)
    _record(out_path, "export", [frozen], asdict(report))
    return report


# --- calibrate / build / bench (no torch) -------------------------------------------------------


def encoding_for(target: str) -> tuple[str, bool]:
    """(activation encoding, reduce_range) for the target's INT8 arithmetic.

    TensorRT: symmetric int8 everywhere (its requirement), full 8-bit weights. ONNX Runtime on this
    CPU: on x86 uint8 activations (its native U8S8 kernels; symmetric int8 made INT8 2x slower than
    FP32 here), and 7-bit weights where its kernels would saturate with 8 (no VNNI, REFERENCE.md 3).
    """
    from engines.cpu import cpu_features, needs_reduce_range

    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    if target == "tensorrt":
        return "int8-symmetric", False
    features = cpu_features()
    return ("uint8" if features.is_x86 else "int8-symmetric"), needs_reduce_range(features)


def calibrate_stage(
    model: str | os.PathLike,
    calibration_set: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    per_channel: bool,
    target: str = "ort-cpu",
    method: str = "minmax",
    percentile: float | None = None,
    batch_size: int = 32,
    trt_cache: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """INT8 Q/DQ model encoded for `target` (see encoding_for; the tensorrt one serves TensorRT 11
    and ONNX Runtime alike), a JSON record of the calibration next to it, and optionally a
    TensorRT 10 calibration cache from the same ranges."""
    from calibration.metrics import weight_range_spread, worst_spread
    from calibration.quantize import write_qdq_model
    from calibration.ranges import DEFAULT_PERCENTILE, calibrate_ranges
    from calibration.trt_cache import write_model_calibration_cache

    images, _ = load_image_set(_verified(calibration_set))
    activations, reduce_range = encoding_for(target)

    def report_batch(done: int, total: int) -> None:
        if progress is not None:
            progress(f"calibration batch {done}/{total}")

    ranges = calibrate_ranges(_verified(model), images, method, batch_size=batch_size, progress=report_batch,
                              percentile=DEFAULT_PERCENTILE if percentile is None else percentile)  # fmt: skip
    result = write_qdq_model(model, ranges, out_path, per_channel=per_channel, reduce_range=reduce_range,
                             activations=activations)  # fmt: skip
    spreads = weight_range_spread(str(model))
    record = {
        "model": str(model), "output": str(out_path), "target": target, "method": ranges.method,
        "percentile": ranges.percentile, "quantize": asdict(result), "weight_spread": [asdict(s) for s in spreads],
        "worst_weight_spread": asdict(worst_spread(spreads)),
    }  # fmt: skip
    params = {"target": target, "method": method, "per_channel": per_channel, "activations": activations,
              "reduce_range": reduce_range}  # fmt: skip
    if trt_cache is not None:
        write_model_calibration_cache(trt_cache, ranges)
        record["trt_cache"] = str(trt_cache)
        _record(trt_cache, "calibrate", [model, calibration_set], params)
    write_json(Path(out_path).with_suffix(".json"), *CALIBRATION, record)
    _record(out_path, "calibrate", [model, calibration_set], params)
    return record


def build_stage(model: str | os.PathLike, engine_dir: str | os.PathLike, *, precision: str, simulate: bool = False):
    """ONNX Runtime CPU engine; `simulate` runs Q/DQ as float ops (graph optimizations off)."""
    from engines import build_engine

    return build_engine(_verified(model), engine_dir, precision=precision,
                        graph_optimization="disabled" if simulate else "all")  # fmt: skip


def bench_stage(
    engine_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    eval_set: str | os.PathLike | None = None,
    reference_logits: np.ndarray | None = None,
    batch_sizes: tuple[int, ...] = (1, 64),
    min_duration_s: float = 2.0,
    latency: bool = True,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Latency + memory (unless `latency` is False) and accuracy of one engine, as a JSON file.

    Returns the record and the engine's logits on `eval_set` (None without one), so a caller can
    use an FP32 engine's logits as the reference for the others."""
    from engines.bench import bench_engine
    from engines.manifest import EngineManifest
    from mimicnorm_deploy.evaluate import engine_logits, score_logits

    record: dict[str, Any] = {"engine_dir": str(engine_dir)}
    if latency:
        record.update(bench_engine(engine_dir, batch_sizes, min_duration_s=min_duration_s, progress=progress))
    else:
        record["engine"] = asdict(EngineManifest.read(engine_dir))
    logits = None
    if eval_set is not None:
        images, labels = load_image_set(_verified(eval_set))

        def report_batch(done: int, total: int) -> None:
            if progress is not None:
                progress(f"accuracy: {done}/{total} images")

        logits = engine_logits(engine_dir, images, report_batch)
        record["accuracy"] = asdict(score_logits(logits, labels, reference_logits))
    write_json(out_path, *BENCH, record)
    _record(out_path, "bench", [eval_set] if eval_set else [], {"batch_sizes": list(batch_sizes)})
    return record, logits

