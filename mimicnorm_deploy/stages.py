"""The pipeline's stages as functions over files: what the CLI commands and the demo call.

Each stage checks its inputs against the manifest of the directory they sit in, does its work
through the library API, and records its outputs (sha256, inputs' hashes, parameters, versions)
in the manifest of the directory it wrote to. Modules that need torch are imported inside the
stages that need them, so `calibrate`, `build`, `bench` and `report` run on a Jetson without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines import DEFAULT_BACKEND
from engines.artifacts import (
    check_images_fit,
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
from engines.paths import StageIO
from engines.precision_plan import Gate, holdout_needed
from engines.schemas import BENCH, CALIBRATION, DATA_SOURCE
from engines.targets import DEFAULT_TARGET, get_target

if TYPE_CHECKING:
    from calibration.equalize import EqualizeResult
    from calibration.ranges import ActivationRanges
    from calibration.targets import TargetEncoding
    from engines.precision_plan import PrecisionPlan

Progress = Callable[[str], None]
# Where each input comes from, for the one-line errors about a wrong path.
FROM_PREPARE_DATA = "pass an image set (.npz) written by 'mimicnorm-deploy prepare-data'"
FROM_TRAIN = "pass the checkpoint.safetensors written by 'mimicnorm-deploy train'"
FROM_FREEZE = "pass the frozen .safetensors written by 'mimicnorm-deploy freeze'"
FROM_EXPORT = "pass the FP32 .onnx written by 'mimicnorm-deploy export'"
FROM_BUILD = "pass an engine directory written by 'mimicnorm-deploy build'"


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
    test: str  # test.npz, or val.npz when the held-out split is a validation split
    calibration_images: int
    test_images: int
    test_split: str  # "test" or "val"


DATA_SOURCE_FILE = "dataset.json"
DEFAULT_CALIBRATION_COUNT = 512
HELD_OUT_SPLITS = ("test", "val")


def prepare_data(
    dataset,
    out_dir: str | os.PathLike,
    *,
    calibration_count: int | None = None,
    seed: int = 0,
    source: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> PreparedData:
    """Write the deterministic calibration sample (training split), the labelled held-out split
    (`test.npz`, or `val.npz` when it is a validation split) and, with `source` (the data set's
    name, directory and image size), the record `train --data` reads them from.

    `calibration_count` None takes the default 512, or every training image when there are fewer
    (said through `progress`); an explicit count larger than the training split is refused."""
    from mimicnorm_deploy.training.data import calibration_indices

    out = Path(out_dir)
    prepare_data_io(out)
    count = _calibration_count(calibration_count, len(dataset.train_images), progress)
    index = calibration_indices(len(dataset.train_images), count, seed)
    calib = save_image_set(out / "calib.npz", dataset.train_images[index], dataset.train_labels[index], 1 / 255)
    test = save_image_set(out / f"{dataset.test_split}.npz", dataset.test_images, dataset.test_labels, 1 / 255)
    params = {"dataset": dataset.name, "calibration_count": len(index), "seed": seed, "split": "train"}
    _record(calib, "prepare-data", [], params)
    _record(test, "prepare-data", [], {"dataset": dataset.name, "split": dataset.test_split})
    if source is not None:
        record = {**source, "classes": list(dataset.classes), "train_images": len(dataset.train_images),
                  "held_out_split": dataset.test_split, "held_out_images": len(dataset.test_images)}  # fmt: skip
        _record(write_json(out / DATA_SOURCE_FILE, *DATA_SOURCE, record), "prepare-data", [], {})
    return PreparedData(str(calib), str(test), len(index), len(dataset.test_images), dataset.test_split)


def _calibration_count(requested: int | None, num_train: int, progress: Progress | None) -> int:
    if requested is not None and requested > num_train:
        raise UserError(f"--calibration-count {requested} is more than the {num_train} training images; "
                        f"pass {num_train} or fewer")  # fmt: skip
    if requested is None and num_train < DEFAULT_CALIBRATION_COUNT:
        if progress is not None:
            progress(f"adjusted: --calibration-count {DEFAULT_CALIBRATION_COUNT} -> {num_train} (all the training "
                     "images; pass --calibration-count to choose)")  # fmt: skip
        return num_train
    return requested or DEFAULT_CALIBRATION_COUNT


def prepare_data_io(out_dir: str | os.PathLike) -> StageIO:
    """prepare-data's outputs, checked before the data set is read."""
    io = StageIO("prepare-data")
    out = io.output_dir(out_dir, "data directory")
    for name in ("calib.npz", *(f"{split}.npz" for split in HELD_OUT_SPLITS), DATA_SOURCE_FILE):
        io.output_file(out / name, "prepared data")
    return io


def read_data_source(data_dir: str | os.PathLike) -> dict[str, Any]:
    """What `prepare-data` recorded about its images (data set, directory, image size), for `train --data`."""
    io = StageIO("train")
    directory = io.input_dir(data_dir, "pass the --out directory of 'mimicnorm-deploy prepare-data'")
    record = read_json(_verified(directory / DATA_SOURCE_FILE), *DATA_SOURCE)
    fields = {"dataset": str, "data_dir": (str, type(None)), "image_size": int}
    for name, kind in fields.items():
        if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
            raise UserError(f"{directory / DATA_SOURCE_FILE}: '{name}' is {record.get(name)!r}; re-run prepare-data")
    return record


# Small data sets: fewer steps than these per epoch / in all would leave the default schedule
# barely trained (an ImageFolder of 120 images at batch 128 is one step per epoch).
MIN_STEPS_PER_EPOCH = 8
MIN_TOTAL_STEPS = 200
MIN_BATCH = 8


def fit_to_data(
    num_train: int, batch_size: int | None, epochs: float | None, *, default_batch: int = 128,
    default_epochs: float = 2.0,
) -> tuple[int, float, str | None]:
    """The batch size and epochs to train with, and a one-line note of what was adjusted.

    Values the user gave are kept. Defaults shrink for a small training split: the batch to the
    largest power of two giving MIN_STEPS_PER_EPOCH steps (at least MIN_BATCH, at most the split), the epochs up to
    MIN_TOTAL_STEPS optimizer steps."""
    changes = []
    batch = batch_size if batch_size is not None else default_batch
    if batch_size is None and num_train < default_batch * MIN_STEPS_PER_EPOCH:
        batch = min(num_train, max(MIN_BATCH, 2 ** int(math.log2(max(num_train // MIN_STEPS_PER_EPOCH, 1)))))
        if batch != default_batch:
            changes.append(f"--batch-size {default_batch} -> {batch}")
    steps_per_epoch = max(1, math.ceil(num_train / batch))
    chosen_epochs = epochs if epochs is not None else default_epochs
    if epochs is None and default_epochs * steps_per_epoch < MIN_TOTAL_STEPS:
        chosen_epochs = float(math.ceil(MIN_TOTAL_STEPS / steps_per_epoch))
        changes.append(f"--epochs {default_epochs:g} -> {chosen_epochs:g}")
    if not changes:
        return batch, chosen_epochs, None
    note = (f"adjusted for {num_train} training images: {', '.join(changes)} ({steps_per_epoch} steps per epoch, "
            f"{math.ceil(chosen_epochs * steps_per_epoch)} in all); pass them to choose")  # fmt: skip
    return batch, chosen_epochs, note


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

    train_io(out_dir)
    result = train(config, dataset, out_dir, progress, resume_from=out_dir if resume else None)
    if is_main_process():
        for name in (CHECKPOINT_FILE, METRICS_FILE, TRAIN_REPORT_FILE, TRAIN_STATE_FILE):
            _record(Path(out_dir) / name, "train", [], {**asdict(config), "dataset": dataset.name})
    return result


def train_io(out_dir: str | os.PathLike) -> StageIO:
    """train's outputs, checked before the data set is read (a resumed run replaces its own files)."""
    from mimicnorm_deploy.training.train import CHECKPOINT_FILE, METRICS_FILE, TRAIN_REPORT_FILE, TRAIN_STATE_FILE

    io = StageIO("train")
    out = io.output_dir(out_dir, "run directory")
    for name in (CHECKPOINT_FILE, METRICS_FILE, TRAIN_REPORT_FILE, TRAIN_STATE_FILE):
        io.output_file(out / name, "training output")
    return io


def freeze_stage(checkpoint: str | os.PathLike, out_path: str | os.PathLike, check_images: str | None = None):
    from mimicnorm_deploy.training.checkpoint import read_checkpoint_meta
    from mimicnorm_deploy.training.freeze import freeze_checkpoint

    io = StageIO("freeze")
    io.input_file(checkpoint, FROM_TRAIN)
    if check_images is not None:
        io.input_file(check_images, FROM_PREPARE_DATA)
    io.output_file(out_path, "frozen checkpoint")
    meta = read_checkpoint_meta(_verified(checkpoint))
    images = None
    if check_images is not None:
        images, labels = load_image_set(_verified(check_images))
        check_images_fit(check_images, images, labels, (None, meta.in_chans, meta.image_size, meta.image_size),
                         f"checkpoint {checkpoint}", num_classes=meta.num_classes)  # fmt: skip
        images = images[:256]
    report = freeze_checkpoint(checkpoint, out_path, images)
    inputs = [checkpoint] + ([check_images] if check_images else [])
    _record(out_path, "freeze", inputs, {"equivalence": asdict(report)})
    return report


def export_stage(frozen: str | os.PathLike, out_path: str | os.PathLike):
    from mimicnorm_deploy.training.export import export_onnx

    io = StageIO("export")
    io.input_file(frozen, FROM_FREEZE)
    io.output_file(out_path, "ONNX model")
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
    # Everything outside INT8 (a plan's moved layers, and the graph around the INT8 layers):
    high_precision: str | None = None  # default: the target's (fp16 for TensorRT, fp32 for CPUs)
    trt_cache: str | None = None  # also write a TensorRT 10 calibration cache here
    trt_version: str | None = None  # of the TensorRT that reads the cache (default: the target's first)
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
    """The last `holdout` images measure the gate and are never used for the ranges.

    By default a gated run holds out a quarter of the set, or as many images as a top-1 gate needs
    to be resolved (engines.precision_plan.holdout_needed) up to half of the set; a gate the
    hold-out cannot resolve is refused here, before any work."""
    holdout = options.holdout if options.holdout is not None else _default_holdout(len(images), options)
    if options.gated and holdout < 1:
        raise UserError("the accuracy gate is measured on held-out calibration images; pass --holdout N (N >= 1)")
    if not 0 <= holdout < len(images):
        raise UserError(f"--holdout {holdout} leaves no calibration images of {len(images)}; hold out fewer")
    if options.gated:
        Gate(max_top1_drop=options.max_top1_drop, min_logits_sqnr_db=options.min_logits_sqnr_db).check(holdout)
    cut = len(images) - holdout
    return _CalibrationSplit(images[:cut], labels, images[cut:], labels[cut:] if labels is not None else None)


def _default_holdout(num_images: int, options: CalibrateOptions) -> int:
    if not options.gated:
        return 0
    needed = holdout_needed(options.max_top1_drop) if options.max_top1_drop else 0
    return max(num_images // 4, min(needed, num_images // 2))


def _cache_trt_version(options: CalibrateOptions) -> int:
    """NV_TENSORRT_VERSION for the cache header: --trt-version, else the target's default TensorRT."""
    from engines.trt_cache import cache_trt_version

    version = options.trt_version or get_target(options.target).default_tensorrt_version
    if version is None:
        raise UserError(f"target {options.target} runs no TensorRT, so the cache needs the device's version; "
                        "pass --trt-version, e.g. 10.3 (JetPack 6)")  # fmt: skip
    return cache_trt_version(version)


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


def _write_calibrated_model(model, ranges, plan, staging: Path, out: Path, options: CalibrateOptions, encoding,
                            high_precision: str):  # fmt: skip
    """The INT8 Q/DQ model (`high_precision` around its INT8 layers), or with a plan the
    mixed-precision model (+ the plan); returns the quantization summary (None for a mixed model
    without INT8 layers) and the products written."""
    from calibration.plan import write_int8_model, write_mixed_model

    staged = staging / out.name
    if plan is None:
        result = write_int8_model(model, ranges, staged, high_precision=high_precision,
                                  per_channel=options.per_channel, **encoding.qdq_options)  # fmt: skip
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


def _write_trt_cache(cache: Path, ranges, staging: Path, trt_version: int) -> list[Path]:
    from engines.trt_cache import sidecar_path, write_model_calibration_cache

    write_model_calibration_cache(staging / cache.name, ranges, trt_version)
    return [cache, sidecar_path(cache)]


def _write_fp16_model(model, fp16: Path, ranges, staging: Path, fp16_io: str) -> list[Path]:
    from calibration.fp16 import convert_fp16

    convert_fp16(model, staging / fp16.name, keep_io_fp32=fp16_io == "fp32", activation_max_abs=ranges.max_abs)
    return [fp16]


def equalize_stage(model: str | os.PathLike, out_path: str | os.PathLike):
    """Cross-layer equalization of an FP32 model (calibration.equalize): the equalized model's path
    and what was equalized."""
    from calibration.equalize import write_equalized_model

    io = StageIO("equalize")
    io.input_file(model, FROM_EXPORT)
    io.output_file(out_path, "equalized model")
    result = write_equalized_model(_verified(model), out_path)
    _record(out_path, "equalize", [model], {"pairs": len(result.pairs), "sweeps": result.sweeps,
                                            "skipped": result.skipped})  # fmt: skip
    return Path(out_path), result


def calibrate_io(
    model: str | os.PathLike, calibration_set: str | os.PathLike, out_path: str | os.PathLike, options: CalibrateOptions
) -> StageIO:
    """Everything calibrate reads and writes, checked before any work: no product may replace an
    input or another product."""
    from engines.trt_cache import sidecar_path

    io = StageIO("calibrate")
    io.input_file(model, FROM_EXPORT)
    io.input_file(calibration_set, FROM_PREPARE_DATA)
    if options.eval_set is not None:
        io.input_file(options.eval_set, FROM_PREPARE_DATA)
    out = io.output_file(out_path, "calibrated model")
    for suffix in (".json", ".ranges.json", ".quality.md", ".quality.png") + ((".plan.json",) if options.gated else ()):
        io.output_file(out.with_suffix(suffix), f"{suffix} beside --out")
    if options.trt_cache is not None:
        cache = io.output_file(_beside(options.trt_cache, out, "TensorRT cache"), "TensorRT cache")
        io.output_file(sidecar_path(cache), "TensorRT cache sidecar")
    if options.fp16 is not None:
        io.output_file(_beside(options.fp16, out, "FP16 model"), "FP16 model")
    return io


def _check_image_sets(model: str | os.PathLike, sets: list[str | os.PathLike]) -> None:
    """Each image set fits the model's input and its labels the model's classes, before any work."""
    from calibration.inputs import image_input, load_fp32_model, num_classes

    onnx_model = load_fp32_model(Path(model))
    _, dims = image_input(onnx_model, Path(model))
    for image_set in sets:
        images, labels = load_image_set(_verified(image_set))
        check_images_fit(image_set, images, labels, dims, f"model {model}", num_classes=num_classes(onnx_model))


def calibrate_stage(
    model: str | os.PathLike,
    calibration_set: str | os.PathLike,
    out_path: str | os.PathLike,
    options: CalibrateOptions,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Calibrate `model` (FP32 ONNX) and write, next to `out_path`, all or nothing of:

    - `out_path`: the INT8 Q/DQ model encoded for the target (calibration.targets), the graph
      around its INT8 layers in the high precision type (FP16 for TensorRT targets, FP32 for cpu,
      or --high-precision), or with a gate the mixed-precision model of the plan;
    - `<out>.json`: the calibration record with the quality report; `<out>.quality.md` / `.png`;
    - `<out>.ranges.json`: the activation ranges; `<out>.plan.json`: the precision plan (gated);
    - optionally a TensorRT 10 calibration cache (+ sidecar) for --trt-version (default: the
      target's first TensorRT version) and a pure FP16 model;
    - with `equalize`, first `<out>.equalized.onnx`, the cross-layer-equalized FP32 model that
      everything else is then made from (a complete artifact of its own, recorded by `equalize`).
    """
    from calibration.targets import encoding_for

    out = Path(out_path)
    encoding = encoding_for(options.target)
    high_precision = options.high_precision or encoding.high_precision
    trt_version = _checked_calibrate_request(model, calibration_set, out, options)
    split = _split_holdout(*load_image_set(_verified(calibration_set)), options)
    equalization = None  # options checked first: bad ones write nothing
    if options.equalize:
        model, equalization = equalize_stage(model, out.with_name(f"{out.stem}.equalized.onnx"))
    say = _say_to(progress)
    ranges = _calibration_ranges(model, split, options, say)
    plan = _plan(model, ranges, split, options, encoding, high_precision, say) if options.gated else None
    context = _CalibrationContext(model, out, options, encoding, high_precision, split, ranges, plan, equalization)
    record, products = _write_calibration(context, trt_version, say)
    params = {**asdict(options), "activations": encoding.activations, "reduce_range": encoding.reduce_range,
              "placement": encoding.placement, "high_precision": high_precision}  # fmt: skip
    inputs = [model, calibration_set] + ([options.eval_set] if options.eval_set else [])
    for product in products:
        _record(product, "calibrate", inputs, params)
    return record


def _checked_calibrate_request(
    model: str | os.PathLike, calibration_set: str | os.PathLike, out: Path, options: CalibrateOptions
) -> int | None:
    """Every option, path and image set checked before any work; the cache's TensorRT version
    (None without a cache)."""
    if options.fp16_io not in ("fp32", "fp16"):
        raise UserError(f"FP16 model input/output type {options.fp16_io!r} is not fp32 or fp16")
    calibrate_io(model, calibration_set, out, options)
    trt_version = None if options.trt_cache is None else _cache_trt_version(options)
    _check_image_sets(model, [calibration_set] + ([options.eval_set] if options.eval_set else []))
    return trt_version


def _say_to(progress: Progress | None) -> Progress:
    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    return say


def _calibration_ranges(model, split: _CalibrationSplit, options: CalibrateOptions, say: Progress):
    """The activation ranges, from the calibration images outside the hold-out."""
    from calibration.ranges import DEFAULT_PERCENTILE, calibrate_ranges

    return calibrate_ranges(
        _verified(model), split.range_images, options.method, batch_size=options.batch_size,
        percentile=DEFAULT_PERCENTILE if options.percentile is None else options.percentile,
        progress=lambda done, total: say(f"calibration batch {done}/{total}"),
    )  # fmt: skip


@dataclass
class _CalibrationContext:
    """What calibrate decided before writing anything: the products are made from it."""

    model: str | os.PathLike  # the FP32 model they are made from (the equalized one with --equalize)
    out: Path
    options: CalibrateOptions
    encoding: TargetEncoding
    high_precision: str
    split: _CalibrationSplit
    ranges: ActivationRanges
    plan: PrecisionPlan | None  # None without a gate
    equalization: EqualizeResult | None  # None without --equalize


def _write_calibration(context: _CalibrationContext, trt_version: int | None, say: Progress):
    """Every product written together (staged, moved into place on success): the record and the
    products' paths."""
    model, out, options, ranges, plan = context.model, context.out, context.options, context.ranges, context.plan
    quality_set = _quality_images(context.split, options.eval_set)
    title = f"{out.name}: {options.target}, {ranges.method}, " + ("per-channel" if options.per_channel else
                                                                    "per-tensor")  # fmt: skip
    products = [out.with_suffix(".json"), out.with_suffix(".ranges.json")]
    with staged_files(out.parent) as staging:
        result, written = _write_calibrated_model(model, ranges, plan, staging, out, options, context.encoding,
                                                  context.high_precision)  # fmt: skip
        products += written
        ranges.save(staging / out.with_suffix(".ranges.json").name)
        say(f"quality report on {len(quality_set[0])} images ({quality_set[2]})")
        quality, written = _write_quality_report(model, staging, out, plan, quality_set, options, title)
        products += written
        if result is not None:
            result.output_path = str(out)  # where it will be once the staged files are moved
        record = _calibration_record(context, result, quality)
        products += _write_extra_products(context, staging, trt_version, record)
        write_json(staging / out.with_suffix(".json").name, *CALIBRATION, record)
    return record, products


def _calibration_record(context: _CalibrationContext, result, quality) -> dict[str, Any]:
    """The calibration record (<out>.json) before the extra products add their entries."""
    from calibration.metrics import weight_range_spread, worst_spread

    spreads = weight_range_spread(str(context.model))
    ranges, plan, split, equalization = context.ranges, context.plan, context.split, context.equalization
    return {
        "model": str(context.model), "output": str(context.out), "target": context.options.target,
        "encoding": asdict(context.encoding), "high_precision": context.high_precision,
        "method": ranges.method, "percentile": ranges.percentile, "calibration_images": len(split.range_images),
        "holdout_images": len(split.holdout_images), "quantize": asdict(result) if result is not None else None,
        "plan": asdict(plan) if plan is not None else None, "quality": asdict(quality),
        "weight_spread": [asdict(s) for s in spreads], "worst_weight_spread": asdict(worst_spread(spreads)),
        "equalization": asdict(equalization) if equalization is not None else None,
    }  # fmt: skip


def _write_extra_products(
    context: _CalibrationContext, staging: Path, trt_version: int | None, record: dict[str, Any]
) -> list[Path]:
    """The TensorRT cache and the FP16 model when asked for, each named in the record."""
    options, products = context.options, []
    if options.trt_cache is not None:
        trt_cache = Path(options.trt_cache)
        products += _write_trt_cache(trt_cache, context.ranges, staging, trt_version)
        record["trt_cache"] = str(trt_cache)
        record["trt_cache_version"] = trt_version
    if options.fp16 is not None:
        fp16 = Path(options.fp16)
        products += _write_fp16_model(context.model, fp16, context.ranges, staging, options.fp16_io)
        record["fp16"] = str(fp16)
    return products


def build_stage(
    model: str | os.PathLike, engine_dir: str | os.PathLike, *, backend: str = DEFAULT_BACKEND, options: Any = None
):
    """An engine directory built by `backend` (engines.registry) with its `options` (None: defaults)."""
    from engines import build_engine

    # The builder checks its paths (engines.engine_dir.check_replaceable, through engines.paths).
    return build_engine(_verified(model), engine_dir, backend=backend, options=options)


def bench_io(
    engine_dirs: Sequence[str | os.PathLike],
    out_paths: Sequence[str | os.PathLike],
    *,
    eval_set: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
) -> StageIO:
    """bench's inputs (engine directories are read as a whole: nothing may be written inside) and outputs."""
    io = StageIO("bench")
    for engine_dir in [*engine_dirs, *([reference] if reference is not None else [])]:
        io.input_dir(engine_dir, FROM_BUILD, artifact=True)
    if eval_set is not None:
        io.input_file(eval_set, FROM_PREPARE_DATA)
    for out_path in out_paths:
        io.output_file(out_path, "bench record")
    return io


def check_engine_images(engine_dir: str | os.PathLike, image_set: str | os.PathLike) -> None:
    """The image set fits the engine's input and its labels the engine's classes."""
    from engines import load_runner

    images, labels = load_image_set(_verified(image_set))
    with load_runner(engine_dir) as runner:
        image_input, logits = runner.inputs[0], runner.outputs[0]
    classes = logits.shape[-1] if logits.shape and isinstance(logits.shape[-1], int) else None
    check_images_fit(image_set, images, labels, image_input.shape, f"engine {engine_dir}", num_classes=classes)


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

    bench_io([engine_dir], [], eval_set=eval_set)
    check_engine_images(engine_dir, eval_set)
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
    bench_io(engine_dirs, out_paths, eval_set=eval_set)
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
