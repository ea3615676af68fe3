"""The pipeline's stages as functions over files: what the CLI commands and the demo call.

Each stage checks its inputs against the manifest of the directory they sit in, does its work
through the library API, and records its outputs (sha256, inputs' hashes, parameters, versions)
in the manifest of the directory it wrote to. Modules that need torch are imported inside the
stages that need them, so `calibrate`, `build`, `bench` and `report` run on a Jetson without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines import DEFAULT_BACKEND
from engines.artifacts import (
    load_image_set,
    read_json,
    record_artifact,
    save_image_set,
    staged_files,
    verify_artifact,
    write_json,
)
from engines.bench import BenchPlan
from engines.errors import UserError
from engines.precision_plan import Gate
from engines.schemas import BENCH, CALIBRATION
from engines.targets import DEFAULT_TARGET, get_target

Progress = Callable[[str], None]


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
    from mimicnorm_deploy.training.data import calibration_indices

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
    from mimicnorm_deploy.training.distributed import is_main_process
    from mimicnorm_deploy.training.train import (
        CHECKPOINT_FILE,
        METRICS_FILE,
        TRAIN_REPORT_FILE,
        TRAIN_STATE_FILE,
        train,
    )

    result = train(config, dataset, out_dir, progress, resume_from=out_dir if resume else None)
    if is_main_process():
        for name in (CHECKPOINT_FILE, METRICS_FILE, TRAIN_REPORT_FILE, TRAIN_STATE_FILE):
            _record(Path(out_dir) / name, "train", [], {**asdict(config), "dataset": dataset.name})
    return result


def freeze_stage(checkpoint: str | os.PathLike, out_path: str | os.PathLike, check_images: str | None = None):
    from mimicnorm_deploy.training.freeze import freeze_checkpoint

    images = None
    if check_images is not None:
        images = load_image_set(_verified(check_images))[0][:256]
    report = freeze_checkpoint(_verified(checkpoint), out_path, images)
    inputs = [checkpoint] + ([check_images] if check_images else [])
    _record(out_path, "freeze", inputs, {"equivalence": asdict(report)})
    return report


def export_stage(frozen: str | os.PathLike, out_path: str | os.PathLike):
    from mimicnorm_deploy.training.export import export_onnx

    report = export_onnx(_verified(frozen), out_path)
    _record(out_path, "export", [frozen], asdict(report))
    return report


# --- calibrate / build / bench (no torch) -------------------------------------------------------


@dataclass
class CalibrateOptions:
    """What `calibrate` makes of an FP32 model; see calibrate_stage."""

    per_channel: bool = False
    target: str = DEFAULT_TARGET  # a name in engines.targets.TARGETS
    method: str = "minmax"  # calibration.ranges.METHODS
    percentile: float | None = None  # for method "percentile" (default 99.99)
    batch_size: int = 32
    # Mixed precision: with a gate, the planner moves the most sensitive layers out of INT8 until
    # the last `holdout` calibration images (never used for the ranges) pass it.
    max_top1_drop: float | None = None  # fraction (0.005 = half a point)
    min_logits_sqnr_db: float | None = None
    holdout: int | None = None  # default: a quarter of the calibration set when gated, else none
    high_precision: str | None = None  # default: the target's (fp16 for TensorRT, fp32 for CPUs)
    trt_cache: str | None = None  # also write a TensorRT 10 calibration cache here
    fp16: str | None = None  # also write the pure FP16 model here
    fp16_io: str = "fp32"  # the pure FP16 model's input and output type: fp32 (behind Casts) or fp16
    eval_set: str | None = None  # labelled images for the quality report (default: hold-out or calibration)
    # Cross-layer equalization first (calibration.equalize); everything is then made from the
    # equalized FP32 model, written beside the output as <out>.equalized.onnx.
    equalize: bool = False

    @property
    def gated(self) -> bool:
        return self.max_top1_drop is not None or self.min_logits_sqnr_db is not None


@dataclass
class _CalibrationSplit:
    range_images: np.ndarray
    labels: np.ndarray | None  # of the whole set
    holdout_images: np.ndarray
    holdout_labels: np.ndarray | None


def _split_holdout(images: np.ndarray, labels: np.ndarray | None, options: CalibrateOptions) -> _CalibrationSplit:
    """The last `holdout` images measure the gate and are never used for the ranges."""
    holdout = options.holdout if options.holdout is not None else (len(images) // 4 if options.gated else 0)
    if options.gated and holdout < 1:
        raise UserError("the accuracy gate is measured on held-out calibration images; pass --holdout N (N >= 1)")
    if not 0 <= holdout < len(images):
        raise UserError(f"--holdout {holdout} leaves no calibration images of {len(images)}; hold out fewer")
    cut = len(images) - holdout
    return _CalibrationSplit(images[:cut], labels, images[cut:], labels[cut:] if labels is not None else None)


def _quality_images(split: _CalibrationSplit, eval_set: str | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The quality report's images: the evaluation set, else the hold-out, else the calibration images."""
    if eval_set is not None:
        images, labels = load_image_set(_verified(eval_set))
        return images, labels, Path(eval_set).name
    if len(split.holdout_images):
        return split.holdout_images, split.holdout_labels, "calibration hold-out"
    return split.range_images, split.labels, "the calibration images themselves"


def _beside(path: str, out: Path, what: str) -> Path:
    """Extra products are staged and moved with the model, so they must sit in its directory."""
    product = Path(path)
    if product.parent.resolve() != out.parent.resolve():
        raise UserError(f"{product}: write the {what} next to {out.name} (same directory)")
    return product


def _plan(model, ranges, split: _CalibrationSplit, options: CalibrateOptions, encoding, high_precision: str, say):
    from calibration.plan import plan_precision

    gate = Gate(max_top1_drop=options.max_top1_drop, min_logits_sqnr_db=options.min_logits_sqnr_db)
    return plan_precision(model, ranges, split.holdout_images, gate, holdout_labels=split.holdout_labels,
                          per_channel=options.per_channel, **encoding.qdq_options,
                          high_precision=high_precision, progress=say)  # fmt: skip


def _write_calibrated_model(model, ranges, plan, staging: Path, out: Path, options: CalibrateOptions, encoding):
    """The INT8 Q/DQ model, or with a plan the mixed-precision model (+ the plan); returns the
    quantization summary (None for a mixed model) and the products written."""
    from calibration.plan import write_mixed_model
    from calibration.quantize import write_qdq_model

    staged = staging / out.name
    if plan is None:
        result = write_qdq_model(model, ranges, staged, per_channel=options.per_channel, **encoding.qdq_options)
        return result, [out]
    result = write_mixed_model(model, plan, ranges, staged)
    plan.save(staging / out.with_suffix(".plan.json").name)
    return result, [out, out.with_suffix(".plan.json")]


def _write_quality_report(model, staging: Path, out: Path, plan, quality_set, options: CalibrateOptions, title: str):
    """Measure the written model against FP32 and write the report (.quality.md / .png)."""
    from calibration.quality import measure_quality, render_quality_plot, write_quality_markdown

    images, labels, image_set = quality_set
    quality = measure_quality(
        model, staging / out.name, images, labels, image_set=image_set,
        precisions=plan.layers if plan else None,
        sensitivity={s.node: s.logits_sqnr_db for s in plan.sensitivity} if plan else None,
        kernels=_kernels_run_here(options.target),
    )  # fmt: skip
    write_quality_markdown(quality, title, staging / out.with_suffix(".quality.md").name)
    render_quality_plot(quality, title, staging / out.with_suffix(".quality.png").name)
    return quality, [out.with_suffix(".quality.md"), out.with_suffix(".quality.png")]


def _kernels_run_here(target: str) -> str | None:
    """The target's backend when its INT8 kernels run on this machine (ONNX Runtime's CPU kernels),
    else None: the quality report then claims no kernel figures."""
    backend = get_target(target).backend
    return backend if backend == "onnxruntime" else None


def _write_trt_cache(cache: Path, ranges, staging: Path) -> list[Path]:
    from engines.trt_cache import sidecar_path, write_model_calibration_cache

    write_model_calibration_cache(staging / cache.name, ranges)
    return [cache, sidecar_path(cache)]


def _write_fp16_model(model, fp16: Path, ranges, staging: Path, fp16_io: str) -> list[Path]:
    from calibration.fp16 import convert_fp16

    convert_fp16(model, staging / fp16.name, keep_io_fp32=fp16_io == "fp32", activation_max_abs=ranges.max_abs)
    return [fp16]


def equalize_stage(model: str | os.PathLike, out_path: str | os.PathLike):
    """Cross-layer equalization of an FP32 model (calibration.equalize): the equalized model's path
    and what was equalized."""
    from calibration.equalize import write_equalized_model

    result = write_equalized_model(_verified(model), out_path)
    _record(out_path, "equalize", [model], {"pairs": len(result.pairs), "sweeps": result.sweeps,
                                            "skipped": result.skipped})  # fmt: skip
    return Path(out_path), result


def calibrate_stage(
    model: str | os.PathLike,
    calibration_set: str | os.PathLike,
    out_path: str | os.PathLike,
    options: CalibrateOptions,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Calibrate `model` (FP32 ONNX) and write, next to `out_path`, all or nothing of:

    - `out_path`: the INT8 Q/DQ model encoded for the target (calibration.targets), or with a gate
      the mixed-precision model of the plan (its high-precision layers in FP16 or FP32);
    - `<out>.json`: the calibration record with the quality report; `<out>.quality.md` / `.png`;
    - `<out>.ranges.json`: the activation ranges; `<out>.plan.json`: the precision plan (gated);
    - optionally a TensorRT 10 calibration cache (+ sidecar) and a pure FP16 model;
    - with `equalize`, first `<out>.equalized.onnx`, the cross-layer-equalized FP32 model that
      everything else is then made from (a complete artifact of its own, recorded by `equalize`).
    """
    from calibration.metrics import weight_range_spread, worst_spread
    from calibration.ranges import DEFAULT_PERCENTILE, calibrate_ranges
    from calibration.targets import encoding_for

    out = Path(out_path)
    encoding = encoding_for(options.target)
    high_precision = options.high_precision or encoding.high_precision
    if options.fp16_io not in ("fp32", "fp16"):
        raise UserError(f"FP16 model input/output type {options.fp16_io!r} is not fp32 or fp16")
    trt_cache = None if options.trt_cache is None else _beside(options.trt_cache, out, "TensorRT cache")
    fp16 = None if options.fp16 is None else _beside(options.fp16, out, "FP16 model")
    images, labels = load_image_set(_verified(calibration_set))
    split = _split_holdout(images, labels, options)
    equalization = None  # options checked first: bad ones write nothing
    if options.equalize:
        model, equalization = equalize_stage(model, out.with_name(f"{out.stem}.equalized.onnx"))

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    ranges = calibrate_ranges(
        _verified(model), split.range_images, options.method, batch_size=options.batch_size,
        percentile=DEFAULT_PERCENTILE if options.percentile is None else options.percentile,
        progress=lambda done, total: say(f"calibration batch {done}/{total}"),
    )  # fmt: skip
    plan = _plan(model, ranges, split, options, encoding, high_precision, say) if options.gated else None
    quality_set = _quality_images(split, options.eval_set)
    title = f"{out.name}: {options.target}, {ranges.method}, " + ("per-channel" if options.per_channel else
                                                                    "per-tensor")  # fmt: skip
    products = [out.with_suffix(".json"), out.with_suffix(".ranges.json")]
    with staged_files(out.parent) as staging:
        result, written = _write_calibrated_model(model, ranges, plan, staging, out, options, encoding)
        products += written
        ranges.save(staging / out.with_suffix(".ranges.json").name)
        say(f"quality report on {len(quality_set[0])} images ({quality_set[2]})")
        quality, written = _write_quality_report(model, staging, out, plan, quality_set, options, title)
        products += written
        if result is not None:
            result.output_path = str(out)  # where it will be once the staged files are moved
        spreads = weight_range_spread(str(model))
        record: dict[str, Any] = {
            "model": str(model), "output": str(out), "target": options.target, "encoding": asdict(encoding),
            "method": ranges.method, "percentile": ranges.percentile, "calibration_images": len(split.range_images),
            "holdout_images": len(split.holdout_images), "quantize": asdict(result) if result is not None else None,
            "plan": asdict(plan) if plan is not None else None, "quality": asdict(quality),
            "weight_spread": [asdict(s) for s in spreads], "worst_weight_spread": asdict(worst_spread(spreads)),
            "equalization": asdict(equalization) if equalization is not None else None,
        }  # fmt: skip
        if trt_cache is not None:
            products += _write_trt_cache(trt_cache, ranges, staging)
            record["trt_cache"] = str(trt_cache)
        if fp16 is not None:
            products += _write_fp16_model(model, fp16, ranges, staging, options.fp16_io)
            record["fp16"] = str(fp16)
        write_json(staging / out.with_suffix(".json").name, *CALIBRATION, record)
    params = {**asdict(options), "activations": encoding.activations, "reduce_range": encoding.reduce_range,
              "placement": encoding.placement, "high_precision": high_precision}  # fmt: skip
    inputs = [model, calibration_set] + ([options.eval_set] if options.eval_set else [])
    for product in products:
        _record(product, "calibrate", inputs, params)
    return record


def build_stage(
    model: str | os.PathLike, engine_dir: str | os.PathLike, *, backend: str = DEFAULT_BACKEND, options: Any = None
):
    """An engine directory built by `backend` (engines.registry) with its `options` (None: defaults)."""
    from engines import build_engine

    return build_engine(_verified(model), engine_dir, backend=backend, options=options)


def engine_labels(engine_dir: str | os.PathLike) -> dict[str, str]:
    """What an engine of a run holds ({"arch", "norm", "variant"}), read from where it sits
    (RUN/NORM/engines/VARIANT, RUN/NORM/train_report.json); empty for an engine elsewhere."""
    from engines.schemas import TRAIN_REPORT
    from mimicnorm_deploy.layout import RunLayout

    path = Path(engine_dir).resolve()
    if path.parent.name != "engines":
        return {}
    norm_dir = path.parent.parent
    labels = {"norm": norm_dir.name, "variant": path.name}
    train_report = RunLayout(norm_dir.parent).train_report(norm_dir.name)
    if train_report.is_file():
        labels["arch"] = read_json(train_report, *TRAIN_REPORT)["config"]["arch"]
    return labels


def accuracy_stage(
    engine_dir: str | os.PathLike,
    eval_set: str | os.PathLike,
    reference_logits: np.ndarray | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Accuracy of one engine on a labelled image set (agreement and SQNR against `reference_logits`
    where given). Returns the score and the engine's logits, so an FP32 engine's can be the reference."""
    from mimicnorm_deploy.evaluate import engine_logits, score_logits

    images, labels = load_image_set(_verified(eval_set))

    def report_batch(done: int, total: int) -> None:
        if progress is not None:
            progress(f"accuracy: {done}/{total} images")

    logits = engine_logits(engine_dir, images, report_batch)
    return asdict(score_logits(logits, labels, reference_logits)), logits


def bench_stage(
    engine_dirs: Sequence[str | os.PathLike],
    out_paths: Sequence[str | os.PathLike],
    *,
    plan: BenchPlan | None = None,
    accuracy: Sequence[dict[str, Any] | None] | None = None,
    eval_set: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """One bench JSON per engine: latency measured in interleaved rounds across all of them and
    memory (unless `plan` is None: accuracy only), with each engine's `accuracy` score (from
    accuracy_stage on `eval_set`) where given."""
    from engines.bench import bench_engines
    from engines.manifest import EngineManifest

    if len(engine_dirs) != len(out_paths):
        raise UserError(f"{len(engine_dirs)} engines but {len(out_paths)} output paths; pass one --out per engine")
    scores = list(accuracy) if accuracy is not None else [None] * len(engine_dirs)
    if plan is not None:
        measured = bench_engines(engine_dirs, plan, progress=progress)
    else:
        measured = [{"engine": asdict(EngineManifest.read(engine_dir))} for engine_dir in engine_dirs]
    records = []
    for engine_dir, out_path, record, score in zip(engine_dirs, out_paths, measured, scores, strict=True):
        record = {"engine_dir": str(engine_dir), "model": engine_labels(engine_dir), **record}
        if score is not None:
            record["accuracy"] = score
        write_json(out_path, *BENCH, record)
        params = {"batch_sizes": list(plan.batch_sizes), "rounds": plan.rounds} if plan is not None else {}
        _record(out_path, "bench", [eval_set] if eval_set else [], params)
        records.append(record)
    return records
