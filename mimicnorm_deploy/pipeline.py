"""The main job: both models through every stage, then the report. `mimicnorm-deploy demo`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engines.artifacts import record_artifact, write_json
from engines.bench import BenchPlan
from engines.precision_plan import holdout_needed
from engines.registry import backend_options
from engines.schemas import FP16_REFUSALS
from engines.targets import DEFAULT_TARGET
from mimicnorm_deploy.layout import (
    CPU_RECIPES,
    EQUALIZED_VARIANT,
    FP16_VARIANT,
    NORMS_COMPARED,
    PLAN_MAX_TOP1_DROP,
    PLAN_VARIANT,
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
    # A depthwise network by default: per-tensor INT8 of its BN-folded twin collapses (folding BN
    # spreads its depthwise convs' per-channel weight ranges 90-280x) where MimicNorm's does not
    # (docs/BENCHMARKS.md section 4); `--arch resnet20` shows a network where both survive.
    arch: str = "mobilenetv2_050"
    # The shortest schedule that shows what the demo is for: the BN twin's per-tensor INT8 collapse.
    # At 0.5 and 0.75 epochs its worst per-channel weight-range spread was 8x and 3x and per-tensor
    # INT8 lost nothing; at 1.0 epoch it was 407x and per-tensor INT8 fell from 87.8 % to 26 %
    # (seed 0, docs/BENCHMARKS.md section 10.1). The warm-up keeps the recipe's share of the
    # schedule (0.3 of 1.8 epochs). Random crop/flip is a regularizer that pays off over long
    # schedules; in under 2 epochs it costs accuracy (measured: 2 epochs of MimicNorm ResNet-20
    # reach 90.1% with it, 91.5% without; docs/BENCHMARKS.md).
    epochs: float = 1.0
    augment: bool = False
    batch_size: int = 128
    lr: float = 0.1
    # Calibration images from the training split (or all of them when there are fewer): the gated
    # plan holds out 300 of them to certify its one-point gate and sets its ranges from the rest.
    calibration_count: int = 1024
    image_size: int = 32  # ImageFolder images are resized to it
    bench_seconds: float = 2.0  # timed seconds per engine and batch size, over all rounds
    bench_rounds: int = 5
    seed: int = 0
    # Left out of the 10-minute budget: the BN twin's per-tensor INT8 after cross-layer equalization,
    # and every INT8 engine scored again with Q/DQ simulated (about 1.5 minutes on 2 cores).
    extended: bool = False
    # Tests: a few training steps and millisecond benchmarks, every stage still real.
    quick: bool = False


WARMUP_SHARE = 0.3 / 1.8  # of the schedule: TrainConfig's 0.3-epoch warm-up in the 1.8 epochs it was measured with


class StageTimes:
    """Wall and CPU time of each demo stage, printed at the end so a slow run shows where it went.
    CPU time counts every thread of this process and its finished children (the bench's memory probes)."""

    def __init__(self) -> None:
        self.stages: dict[str, tuple[float, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        yield
        before = self.stages.get(name, (0.0, 0.0))
        self.stages[name] = (before[0] + time.perf_counter() - wall, before[1] + _cpu_seconds() - cpu)

    def lines(self) -> list[str]:
        total = sum(wall for wall, _ in self.stages.values())
        return ["time by stage (wall min / CPU min, share of wall):"] + [
            f"  {name:<28} {wall / 60:5.1f} / {cpu / 60:5.1f}  {100 * wall / total:3.0f}%"
            for name, (wall, cpu) in self.stages.items()
        ]


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_demo(config: DemoConfig, progress: Progress = print) -> dict[str, Path]:
    from mimicnorm_deploy.report import write_report
    from mimicnorm_deploy.training.data import load_dataset

    started = time.perf_counter()
    timed_stage = StageTimes()
    layout = RunLayout(Path(config.out))
    with timed_stage("data"):
        dataset = load_dataset(config.dataset, config.data_dir, image_size=config.image_size)
        calibration_count = min(config.calibration_count, len(dataset.train_images))
        data = prepare_data(dataset, layout.data_dir, calibration_count=calibration_count, seed=config.seed,
                            progress=progress)  # fmt: skip
    held_out = Path(data.test)  # test.npz, or val.npz for a validation split
    progress(f"data: {data.calibration_images} calibration images (training split), {data.test_images} test images")
    timed: list[tuple[Path, Path, dict]] = []  # (engine, bench JSON, accuracy) of every engine to time
    for norm in NORMS_COMPARED:
        _train_freeze_export(config, dataset, layout, norm, progress, timed_stage)
        with timed_stage("calibrate for this CPU"):
            _calibrate_variants(layout, norm, progress)
        with timed_stage("TensorRT artifacts"):
            tensorrt_artifacts(layout, norm, progress)
        if norm == "bn":
            # What a user with a BN network would try before retraining, scored on the test split. The
            # MimicNorm twin's per-tensor INT8 is already within a fraction of a point of FP32 (its CPU
            # engine shows it), so its plan would move nothing and only cost time.
            with timed_stage("BN: gated plan"):
                gated_plan(layout, norm, held_out, progress, data.calibration_images)
            if config.extended:
                with timed_stage("BN: equalization"):
                    _equalized_per_tensor(layout, norm, held_out, progress)
        with timed_stage("build and score engines"):
            timed += _build_and_score(layout, norm, held_out, progress, simulate=config.extended)
    # Every engine of both models in the same interleaved rounds: each ratio the report prints
    # compares engines measured under the same conditions.
    plan = _bench_plan(config)
    engines, outs, scores = zip(*timed, strict=True)
    progress(f"bench: {len(engines)} engines in {plan.rounds} interleaved rounds, batch sizes {list(plan.batch_sizes)}")
    with timed_stage("bench latency and memory"):
        bench_stage(engines, outs, plan=plan, accuracy=scores, eval_set=held_out, progress=progress)
    with timed_stage("report"):
        paths = write_report(layout.root)
    for line in timed_stage.lines():
        progress(line)
    progress(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min; report: {paths['markdown']}")
    return paths


def _bench_plan(config: DemoConfig) -> BenchPlan:
    if config.quick:
        return BenchPlan(batch_sizes=(1, 64), rounds=2, duration_s=0.05, min_iterations=4, warmup_s=0.01)
    return BenchPlan(batch_sizes=(1, 64), rounds=config.bench_rounds, duration_s=config.bench_seconds)


def _train_freeze_export(
    config: DemoConfig, dataset, layout: RunLayout, norm: str, progress: Progress, timed_stage: StageTimes
) -> None:
    from mimicnorm_deploy.training.train import TrainConfig

    epochs = 2.0 if config.quick else config.epochs  # quick: 2 x 16 steps, enough to learn the synthetic set
    train_config = TrainConfig(
        arch=config.arch, norm=norm, epochs=epochs, warmup_epochs=epochs * WARMUP_SHARE,
        batch_size=32 if config.quick else config.batch_size, lr=config.lr, seed=config.seed, augment=config.augment,
        max_steps_per_epoch=16 if config.quick else 0,
    )  # fmt: skip
    progress(f"[{norm}] train {config.arch} for {train_config.epochs} epochs")
    with timed_stage(f"train ({norm})"):
        train_stage(train_config, dataset, layout.model_dir(norm), progress)
    with timed_stage("freeze and export"):
        equivalence = freeze_stage(layout.checkpoint(norm), layout.frozen(norm), str(layout.calibration_set))
        progress(f"[{norm}] frozen: max |logit diff| {equivalence.max_abs_diff:.2g} (tolerance "
                 f"{equivalence.tolerance:.2g}), top-1 agreement {100 * equivalence.top1_agreement:.0f}%")  # fmt: skip
        export_stage(layout.frozen(norm), layout.onnx(norm))
    progress(f"[{norm}] exported {layout.onnx(norm)}")


def _calibrate_variants(layout: RunLayout, norm: str, progress: Progress) -> None:
    """The CPU variants. Their quality reports measure on the calibration images: the engines'
    test-split accuracy comes from `_build_and_score` (a quality report on the test split would
    repeat that pass)."""
    for recipe in CPU_RECIPES:
        variant = variant_name(recipe, DEFAULT_TARGET)
        options = CalibrateOptions(per_channel=recipe == "int8-per-channel", target=DEFAULT_TARGET)
        record = calibrate_stage(layout.onnx(norm), layout.calibration_set, layout.onnx(norm, variant), options)
        encoding = record["encoding"]
        progress(f"[{norm}] calibrated {variant} for this CPU ({encoding['activations']} activations, "
                 f"reduce_range={encoding['reduce_range']})")  # fmt: skip


def tensorrt_artifacts(layout: RunLayout, norm: str, progress: Progress) -> None:
    """What a TensorRT target needs: the per-channel Q/DQ model (FP16 around its INT8 layers), the
    TensorRT 10 cache and the pure FP16 model. The Q/DQ model's quality report measures on the
    calibration images (the test split would cost a minute per model; the CPU per-channel engines
    show what per-channel INT8 costs on it).

    A model whose activations FP16 cannot hold gets no FP16 product: the refusal is recorded
    (fp16_refusals.json, which the report shows) and the Q/DQ model is written with FP32 around
    its INT8 layers instead, which TensorRT runs as typed."""
    from calibration.fp16 import FP16Overflow

    qdq, fp16 = layout.onnx(norm, TENSORRT_VARIANT), layout.onnx(norm, FP16_VARIANT)
    options = CalibrateOptions(per_channel=True, target=TENSORRT_TARGET, trt_cache=str(layout.tensorrt_cache(norm)),
                               fp16=str(fp16))  # fmt: skip
    refused = []
    try:
        calibrate_stage(layout.onnx(norm), layout.calibration_set, qdq, options)
    except FP16Overflow as refusal:
        # Both products hold the same activations in FP16, so both are refused for the same tensors.
        refused = [_fp16_refusal(fp16, "pure FP16 model", refusal, "not written"),
                   _fp16_refusal(qdq, "FP16 around the INT8 layers", refusal,
                                 "written with FP32 around the INT8 layers")]  # fmt: skip
        progress(f"[{norm}] FP16 refused: {refused[0]['reason']}; no {fp16.name}, and {qdq.name} keeps FP32 "
                 "around its INT8 layers")  # fmt: skip
        options.fp16, options.high_precision = None, "fp32"
        calibrate_stage(layout.onnx(norm), layout.calibration_set, qdq, options)
    _record_fp16_refusals(layout, norm, refused)
    products = [f"{qdq} (TensorRT 11 Q/DQ{', FP32 around INT8' if refused else ''})",
                f"{layout.tensorrt_cache(norm)} (TensorRT 10 cache)", *([] if refused else [f"{fp16} (FP16)"])]
    progress(f"[{norm}] TensorRT artifacts: {', '.join(products)}")


def _fp16_refusal(product: Path, what: str, refusal, instead: str) -> dict:
    largest = sorted(refusal.overflows.items(), key=lambda item: -item[1])
    tensor, max_abs = largest[0]
    return {"product": product.name, "what": what, "instead": instead, "tensors_over_fp16": len(largest),
            "largest": [{"tensor": name, "max_abs": value} for name, value in largest[:5]],
            "reason": f"FP16 cannot hold {tensor!r} (|x| up to {max_abs:.4g} > 65504)"
                      + (f" and {len(largest) - 1} other tensors" if len(largest) > 1 else "")}  # fmt: skip


def _record_fp16_refusals(layout: RunLayout, norm: str, refused: list[dict]) -> None:
    path = write_json(layout.fp16_refusals(norm), *FP16_REFUSALS, {"model": str(layout.onnx(norm)),
                                                                   "refused": refused})  # fmt: skip
    record_artifact(path.parent, path, "demo", inputs=[layout.onnx(norm)], params={})


MIN_RANGE_IMAGES = 128  # the fewest calibration images the gated plan sets its activation ranges from


def gated_plan(layout: RunLayout, norm: str, held_out: Path, progress: Progress, calibration_images: int) -> None:
    """Per-tensor MinMax INT8 for TensorRT, the most sensitive layers moved to FP16 until the
    held-out calibration images lose at most PLAN_MAX_TOP1_DROP of top-1; its accuracy measured on
    the held-out split (Q/DQ simulated). Where FP16 cannot hold the model's activations (the
    TensorRT artifacts' refusal), the plan moves layers to FP32 instead and says so."""
    from calibration.fp16 import FP16Overflow

    holdout = holdout_needed(PLAN_MAX_TOP1_DROP)
    if calibration_images < holdout + MIN_RANGE_IMAGES:
        progress(f"[{norm}] gated plan skipped: its gate of {100 * PLAN_MAX_TOP1_DROP:g} point needs {holdout} "
                 f"held-out calibration images and {MIN_RANGE_IMAGES} more for the ranges; this run has "
                 f"{calibration_images}")  # fmt: skip
        return
    options = CalibrateOptions(target=TENSORRT_TARGET, max_top1_drop=PLAN_MAX_TOP1_DROP, holdout=holdout,
                               eval_set=str(held_out))  # fmt: skip
    if _refused_fp16(layout, norm):
        options.high_precision = "fp32"
    try:
        record = calibrate_stage(layout.onnx(norm), layout.calibration_set, layout.onnx(norm, PLAN_VARIANT), options)
    except FP16Overflow as refusal:
        # The plan's ranges come from fewer images than the TensorRT artifacts' and so never exceed
        # theirs; this is for a run whose artifacts were made before.
        progress(f"[{norm}] gated plan: {refusal}; moving layers to FP32 instead")
        options.high_precision = "fp32"
        record = calibrate_stage(layout.onnx(norm), layout.calibration_set, layout.onnx(norm, PLAN_VARIANT), options)
    plan, quality = record["plan"], record["quality"]
    moved = [m["node"] for m in plan["moved"]]
    progress(f"[{norm}] gated plan from per-tensor INT8: {len(moved)}/{len(plan['layers'])} layers to "
             f"{plan['high_precision'].upper()} ({', '.join(moved) or 'none'}), accuracy "
             f"{100 * quality['accuracy']:.2f}% on {quality['images']} images of {quality['image_set']} "
             f"(FP32 {100 * quality['accuracy_fp32']:.2f}%)")  # fmt: skip


def _refused_fp16(layout: RunLayout, norm: str) -> bool:
    from engines.artifacts import read_json

    path = layout.fp16_refusals(norm)
    return path.is_file() and bool(read_json(path, *FP16_REFUSALS)["refused"])


def _equalized_per_tensor(layout: RunLayout, norm: str, held_out: Path, progress: Progress) -> None:
    """Per-tensor INT8 for this CPU after cross-layer equalization: the strongest BN-folded
    baseline without retraining. No engine: its quality report runs this CPU's INT8 kernels and
    the simulated Q/DQ on the held-out split."""
    options = CalibrateOptions(target=DEFAULT_TARGET, equalize=True, eval_set=str(held_out))
    record = calibrate_stage(layout.onnx(norm), layout.calibration_set, layout.onnx(norm, EQUALIZED_VARIANT), options)
    quality, equalization = record["quality"], record["equalization"]
    progress(f"[{norm}] per-tensor INT8 after cross-layer equalization ({len(equalization['pairs'])} conv pairs): "
             f"accuracy {100 * quality['kernel_accuracy']:.2f}% (simulated {100 * quality['accuracy']:.2f}%, "
             f"FP32 {100 * quality['accuracy_fp32']:.2f}%)")  # fmt: skip


def _build_and_score(
    layout: RunLayout, norm: str, held_out: Path, progress: Progress, simulate: bool
) -> list[tuple[Path, Path, dict]]:
    """ONNX Runtime engines of the CPU variants, scored against the FP32 engine's logits (with
    `simulate`, each INT8 variant again with Q/DQ simulated, accuracy only); returns the engines to time."""
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
        elif simulate:
            simulated = variant + SIMULATED_SUFFIX
            simulated_options = backend_options("onnxruntime", precision=precision, graph_optimization="disabled")
            build_stage(layout.onnx(norm, variant), layout.engine(norm, simulated), options=simulated_options)
            simulated_score, _ = accuracy_stage(layout.engine(norm, simulated), held_out, reference_logits)
            bench_stage([layout.engine(norm, simulated)], [layout.bench(norm, simulated)],
                        accuracy=[simulated_score], eval_set=held_out)  # fmt: skip
        progress(f"[{norm}] {variant}: test accuracy {100 * score['accuracy']:.2f}%")
    return timed
