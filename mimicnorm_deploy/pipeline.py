"""The main job: both models through every stage, then the report. `mimicnorm-deploy demo`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from engines.bench import BenchPlan
from engines.registry import backend_options
from engines.targets import DEFAULT_TARGET
from mimicnorm_deploy.layout import (
    CPU_RECIPES,
    FP16_VARIANT,
    NORMS_COMPARED,
    SIMULATED_SUFFIX,
    TENSORRT_TARGET,
    TENSORRT_VARIANT,
    VARIANTS,
    RunLayout,
    variant_name,
)
from mimicnorm_deploy.stages import (
    CalibrateOptions,
    Progress,
    accuracy_stage,
    bench_stage,
    build_stage,
    calibrate_stage,
    export_stage,
    freeze_stage,
    prepare_data,
    train_stage,
)


@dataclass
class DemoConfig:
    out: str | os.PathLike = "runs/demo"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    arch: str = "resnet20"
    # Sized for the 15-minute budget on 2 CPU cores. Random crop/flip is a regularizer that pays
    # off over long schedules; in under 2 epochs it costs accuracy (measured: 2 epochs of
    # MimicNorm ResNet-20 reach 90.1% with it, 91.5% without; docs/BENCHMARKS.md).
    epochs: float = 1.8
    augment: bool = False
    batch_size: int = 128
    lr: float = 0.1
    calibration_count: int | None = None  # 512, or every training image when there are fewer
    image_size: int = 32  # ImageFolder images are resized to it
    bench_seconds: float = 2.0  # timed seconds per engine and batch size, over all rounds
    bench_rounds: int = 5
    seed: int = 0
    # Tests: a few training steps and millisecond benchmarks, every stage still real.
    quick: bool = False


def run_demo(config: DemoConfig, progress: Progress = print) -> dict[str, Path]:
    from mimicnorm_deploy.report import write_report
    from mimicnorm_deploy.training.data import load_dataset

    started = time.perf_counter()
    layout = RunLayout(Path(config.out))
    dataset = load_dataset(config.dataset, config.data_dir, image_size=config.image_size)
    data = prepare_data(dataset, layout.data_dir, calibration_count=config.calibration_count, seed=config.seed,
                        progress=progress)  # fmt: skip
    held_out = Path(data.test)  # test.npz, or val.npz for a validation split
    progress(f"data: {data.calibration_images} calibration images (training split), {data.test_images} test images")
    timed: list[tuple[Path, Path, dict]] = []  # (engine, bench JSON, accuracy) of every engine to time
    for norm in NORMS_COMPARED:
        _train_freeze_export(config, dataset, layout, norm, progress)
        _calibrate_variants(layout, norm, held_out, progress)
        timed += _build_and_score(layout, norm, held_out, progress)
    # Every engine of both models in the same interleaved rounds: each ratio the report prints
    # compares engines measured under the same conditions.
    plan = _bench_plan(config)
    engines, outs, scores = zip(*timed, strict=True)
    progress(f"bench: {len(engines)} engines in {plan.rounds} interleaved rounds, batch sizes {list(plan.batch_sizes)}")
    bench_stage(engines, outs, plan=plan, accuracy=scores, eval_set=held_out, progress=progress)

    paths = write_report(layout.root)
    progress(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min; report: {paths['markdown']}")
    return paths


def _bench_plan(config: DemoConfig) -> BenchPlan:
    if config.quick:
        return BenchPlan(batch_sizes=(1, 64), rounds=2, duration_s=0.05, min_iterations=4, warmup_s=0.01)
    return BenchPlan(batch_sizes=(1, 64), rounds=config.bench_rounds, duration_s=config.bench_seconds)


def _train_freeze_export(config: DemoConfig, dataset, layout: RunLayout, norm: str, progress: Progress) -> None:
    from mimicnorm_deploy.training.train import TrainConfig

    train_config = TrainConfig(
        arch=config.arch, norm=norm, epochs=config.epochs, batch_size=32 if config.quick else config.batch_size,
        lr=config.lr, seed=config.seed, augment=config.augment, max_steps_per_epoch=16 if config.quick else 0,
    )  # fmt: skip
    progress(f"[{norm}] train {config.arch} for {train_config.epochs} epochs")
    train_stage(train_config, dataset, layout.model_dir(norm), progress)
    equivalence = freeze_stage(layout.checkpoint(norm), layout.frozen(norm), str(layout.calibration_set))
    progress(f"[{norm}] frozen: max |logit diff| {equivalence.max_abs_diff:.2g} (tolerance "
             f"{equivalence.tolerance:.2g}), top-1 agreement {100 * equivalence.top1_agreement:.0f}%")  # fmt: skip
    export_stage(layout.frozen(norm), layout.onnx(norm))
    progress(f"[{norm}] exported {layout.onnx(norm)}")


def _calibrate_variants(layout: RunLayout, norm: str, held_out: Path, progress: Progress) -> None:
    """The CPU variants, with their quality reports on the test split, and what a TensorRT target needs."""
    for recipe in CPU_RECIPES:
        variant = variant_name(recipe, DEFAULT_TARGET)
        options = CalibrateOptions(per_channel=recipe == "int8-per-channel", target=DEFAULT_TARGET,
                                   eval_set=str(held_out))  # fmt: skip
        record = calibrate_stage(layout.onnx(norm), layout.calibration_set, layout.onnx(norm, variant), options)
        encoding = record["encoding"]
        progress(f"[{norm}] calibrated {variant} for this CPU ({encoding['activations']} activations, "
                 f"reduce_range={encoding['reduce_range']})")  # fmt: skip
    tensorrt = CalibrateOptions(per_channel=True, target=TENSORRT_TARGET, trt_cache=str(layout.tensorrt_cache(norm)),
                                fp16=str(layout.onnx(norm, FP16_VARIANT)), eval_set=str(held_out))  # fmt: skip
    calibrate_stage(layout.onnx(norm), layout.calibration_set, layout.onnx(norm, TENSORRT_VARIANT), tensorrt)
    progress(f"[{norm}] TensorRT artifacts: {layout.onnx(norm, TENSORRT_VARIANT)} (TensorRT 11 Q/DQ), "
             f"{layout.tensorrt_cache(norm)} (TensorRT 10 cache), {layout.onnx(norm, FP16_VARIANT)} (FP16)")


def _build_and_score(
    layout: RunLayout, norm: str, held_out: Path, progress: Progress
) -> list[tuple[Path, Path, dict]]:
    """ONNX Runtime engines of the CPU variants, scored against the FP32 engine's logits (each INT8
    variant again with Q/DQ simulated, accuracy only); returns the engines to time."""
    timed = []
    reference_logits = None
    for variant in VARIANTS:
        precision = "fp32" if variant == "fp32" else "int8"
        options = backend_options("onnxruntime", precision=precision)
        build_stage(layout.onnx(norm, variant), layout.engine(norm, variant), options=options)
        score, logits = accuracy_stage(layout.engine(norm, variant), held_out, reference_logits,
                                       progress=lambda msg, tag=f"[{norm}] {variant}": progress(f"{tag} {msg}"))
        timed.append((layout.engine(norm, variant), layout.bench(norm, variant), score))
        if variant == "fp32":
            reference_logits = logits
        else:
            simulated = variant + SIMULATED_SUFFIX
            simulate = backend_options("onnxruntime", precision=precision, graph_optimization="disabled")
            build_stage(layout.onnx(norm, variant), layout.engine(norm, simulated), options=simulate)
            simulated_score, _ = accuracy_stage(layout.engine(norm, simulated), held_out, reference_logits)
            bench_stage([layout.engine(norm, simulated)], [layout.bench(norm, simulated)],
                        accuracy=[simulated_score], eval_set=held_out)  # fmt: skip
        progress(f"[{norm}] {variant}: test accuracy {100 * score['accuracy']:.2f}%")
    return timed
