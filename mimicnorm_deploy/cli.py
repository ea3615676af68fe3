"""`mimicnorm-deploy`: one command per stage, each a thin layer over the Python API.

Commands that need torch (train, freeze, export, demo, models) import it when they run, so the
rest (calibrate, build, bench, report) work on a machine with only the base install.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engines import DEFAULT_BACKEND
from engines.arguments import (
    Flag,
    batch_sizes_or_sweep,
    finite_float,
    non_negative_float,
    non_negative_float_list,
    non_negative_int,
    percentage_points,
    percentile,
    positive_float,
    positive_int,
    positive_int_list,
    unit_interval,
)
from engines.bench import SWEEP_BATCH_SIZES, BenchPlan
from engines.errors import UserError
from engines.paths import StageIO
from engines.registry import BACKENDS, options_module
from engines.targets import DEFAULT_TARGET, TARGETS
from mimicnorm_deploy.failures import OneLineArgumentParser, run_cli
from mimicnorm_deploy.latency_stats import TOLERANCE
from mimicnorm_deploy.progress import ProgressPrinter

# A bar redrawn in place on a terminal, plain lines in CI logs (mimicnorm_deploy.progress).
_progress = ProgressPrinter()


def _needs_torch() -> None:
    # find_spec, not import: torch may only be imported under mimicnorm_deploy/training/.
    try:
        found = importlib.util.find_spec("torch") is not None
    except ImportError:
        found = False
    if not found:
        raise UserError(
            "this command needs PyTorch: pip install 'mimicnorm-deploy[train]' (CPU build: pip install torch==2.13.0)"
        )


def _output(parser: argparse.ArgumentParser, *flags: str, kind: str, **kwargs) -> argparse.Action:
    """An option naming something the command writes (`kind` "file" or "directory"); tagged so the
    fuzz tests find every command's outputs."""
    action = parser.add_argument(*flags, **kwargs)
    action.output_kind = kind
    return action


DEFAULT_DATASET, DEFAULT_IMAGE_SIZE = "fashion-mnist", 32


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that `train --data` can tell a flag given from one left out.
    parser.add_argument("--dataset", help="fashion-mnist (default), cifar10, cifar100, imagefolder or synthetic")
    parser.add_argument("--data-dir", help="the data set's local directory: Fashion-MNIST's four IDX files (default "
                        "/usr/share/datasets/fashion-mnist, from Debian's dataset-fashion-mnist), CIFAR's python "
                        "batches, or an ImageFolder (one sub-directory per class)")  # fmt: skip
    parser.add_argument("--image-size", type=positive_int,
                        help=f"ImageFolder images are resized and cropped to it (default {DEFAULT_IMAGE_SIZE})")


def _data_source(args: argparse.Namespace) -> dict:
    """The data set to read: from `--data` (prepare-data's record) or from the data flags."""
    flags = {"dataset": args.dataset, "data_dir": args.data_dir, "image_size": args.image_size}
    if getattr(args, "data", None) is None:
        return {"dataset": args.dataset or DEFAULT_DATASET, "image_size": args.image_size or DEFAULT_IMAGE_SIZE,
                "data_dir": None if args.data_dir is None else str(Path(args.data_dir).resolve())}  # fmt: skip
    given = [f"--{name.replace('_', '-')}" for name, value in flags.items() if value is not None]
    if given:
        raise UserError(f"--data {args.data} already names the data set; drop {', '.join(given)}")
    from mimicnorm_deploy.stages import read_data_source

    record = read_data_source(args.data)
    return {name: record[name] for name in flags}


def _load_data(args: argparse.Namespace):
    from mimicnorm_deploy.training.data import load_dataset

    source = _data_source(args)
    return load_dataset(source["dataset"], source["data_dir"], image_size=source["image_size"]), source


def _models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--norm", default="none", help="none (the frozen, deployed shape), mimic, bn, bn-revisited")
    p.add_argument("--stem", default="cifar", help="cifar (3x3, keeps resolution) or imagenet (downsampling)")
    p.add_argument("--input-size", type=positive_int, default=32)
    p.add_argument("--in-chans", type=positive_int, default=1)
    p.add_argument("--num-classes", type=positive_int, default=10)


def _cmd_models(args: argparse.Namespace) -> None:
    _needs_torch()
    from mimicnorm_deploy.training.models.describe import describe_models

    rows = describe_models(args.input_size, args.in_chans, args.num_classes, norm=args.norm, stem=args.stem)
    shape = f"{args.input_size}x{args.input_size}x{args.in_chans}"
    print(f"{'model':20s} {'params (M)':>10s} {'MACs (M)':>10s}   at {shape}, {args.stem} stem, norm {args.norm}")
    for row in rows:
        print(f"{row['name']:20s} {row['params'] / 1e6:10.3f} {row['macs'] / 1e6:10.1f}")


def _prepare_data_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_options(p)
    _output(p, "--out", kind="directory", required=True, help="directory for calib.npz, the held-out split (test.npz, "
            "or val.npz when it is a validation split) and dataset.json (what `train --data` reads)")  # fmt: skip
    p.add_argument("--calibration-count", type=positive_int,
                   help="calibration images sampled from the training split (default 512, or all when fewer)")
    p.add_argument("--seed", type=non_negative_int, default=0)


def _cmd_prepare_data(args: argparse.Namespace) -> None:
    _needs_torch()
    from mimicnorm_deploy.stages import prepare_data, prepare_data_io

    prepare_data_io(args.out)  # before the data set is read
    dataset, source = _load_data(args)
    data = prepare_data(dataset, args.out, calibration_count=args.calibration_count, seed=args.seed, source=source,
                        progress=_progress)  # fmt: skip
    held_out = {"test": "the test split", "val": "a validation split"}[data.test_split]
    print(f"{data.calibration} ({data.calibration_images} images from the training split)\n"
          f"{data.test} ({data.test_images} images, {held_out})")  # fmt: skip


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="the --out directory of prepare-data: train on the data set it "
                   "was prepared from (instead of repeating --dataset, --data-dir, --image-size)")  # fmt: skip
    _add_data_options(p)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--norm", default="mimic", help="mimic, bn, bn-revisited, bn-revisited-input-bn or none")
    p.add_argument("--stem", default="cifar", help="cifar (3x3, keeps resolution) or imagenet (downsampling)")
    p.add_argument("--epochs", type=positive_float,
                   help="default 2, more on a small training split (at least 200 steps; said when adjusted)")
    p.add_argument("--batch-size", type=positive_int, help="the global batch (split across torchrun ranks); default "
                   "128, smaller on a small training split (at least 8 steps per epoch; said when adjusted)")
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--momentum", type=unit_interval, default=0.9)
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    p.add_argument("--warmup-epochs", type=non_negative_float, default=0.3)
    p.add_argument("--schedule", default="cosine", help="cosine or step (x0.1 at each of --milestones)")
    p.add_argument("--milestones", type=non_negative_float_list, default=(),
                   help="epochs for the step schedule, e.g. 80,110,135")  # fmt: skip
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--amp", default="off", help="off, bf16 or fp16 (fp16 needs CUDA; adds a grad scaler)")
    p.add_argument("--grad-clip", type=non_negative_float, default=0.0, help="max gradient norm (0 = off)")
    p.add_argument("--label-smoothing", type=unit_interval, default=0.0)
    p.add_argument("--sync-bn", default="off", help="under torchrun on GPUs: off, logits or all")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--no-augment", action="store_true", help="no random crop + flip")
    p.add_argument("--augment-pad", type=non_negative_int, default=2, help="random-crop padding in pixels")
    p.add_argument("--augment-style", default="crop-flip",
                   help="crop-flip (CIFAR-style) or resized-crop (ImageNet-style random-resized crop, flip)")
    p.add_argument("--max-steps-per-epoch", type=non_negative_int, default=0, help="0 = the whole training split")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out exactly")
    _output(p, "--out", kind="directory", required=True, help="output directory")


def _cmd_train(args: argparse.Namespace) -> None:
    _needs_torch()
    from mimicnorm_deploy.stages import fit_to_data, train_io, train_stage
    from mimicnorm_deploy.training.models import create_model
    from mimicnorm_deploy.training.train import TrainConfig

    create_model(args.arch, norm=args.norm, stem=args.stem)  # fail fast on an unknown name, before loading data
    train_io(args.out)
    if args.resume:
        from mimicnorm_deploy.training.train import train_state_path

        train_state_path(args.out)  # an interrupted run to continue, before the data set is read
    dataset, _ = _load_data(args)
    batch_size, epochs, adjusted = fit_to_data(len(dataset.train_images), args.batch_size, args.epochs)
    if adjusted:
        _progress(adjusted)
    config = TrainConfig(
        arch=args.arch, norm=args.norm, stem=args.stem, epochs=epochs, batch_size=batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        schedule=args.schedule, milestones=list(args.milestones),
        seed=args.seed, channels_last=not args.no_channels_last, augment=not args.no_augment,
        augment_pad=args.augment_pad, augment_style=args.augment_style, max_steps_per_epoch=args.max_steps_per_epoch,
        device=args.device,
        amp=args.amp, grad_clip=args.grad_clip, label_smoothing=args.label_smoothing, sync_bn=args.sync_bn,
    )  # fmt: skip
    result = train_stage(config, dataset, args.out, _progress, resume=args.resume)
    print(f"{result.checkpoint}: {dataset.test_split} accuracy {100 * result.final_test_accuracy:.2f}%")


def _profile_memory_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--input-size", type=positive_int, default=32)
    p.add_argument("--in-chans", type=positive_int, default=3)
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.add_argument("--stem", default="cifar")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--amp", default="off")
    p.add_argument("--norms", default="mimic,bn", help="two norms, the first divided by the second")
    _output(p, "--out", kind="file", help="also write the result as JSON")


def _cmd_profile_memory(args: argparse.Namespace) -> None:
    _needs_torch()
    from engines.artifacts import write_json
    from engines.schemas import MEMORY_PROFILE
    from mimicnorm_deploy.training.memory import compare_memory

    norms = tuple(args.norms.split(","))
    if len(norms) != 2:
        raise UserError(f"--norms takes two norms to compare, e.g. mimic,bn; got {args.norms!r}")
    if args.out is not None:
        StageIO("profile-memory").output_file(args.out, "memory profile")
    result = compare_memory(args.model, args.batch, args.input_size, args.in_chans, args.num_classes, args.device,
                            norms=norms, stem=args.stem, amp=args.amp)  # fmt: skip
    for norm, profile in result["norms"].items():
        mib = {key: value / 2**20 for key, value in profile.items() if key.endswith("_bytes")}
        line = (f"{norm:14s} activations {mib['activation_bytes']:9.1f} MiB, parameters {mib['parameter_bytes']:.1f}"
                f" + gradients {mib['gradient_bytes']:.1f} + momentum {mib['optimizer_state_bytes']:.1f} MiB, "
                f"total {mib['training_bytes']:.1f} MiB")  # fmt: skip
        if "cuda_peak_allocated_bytes" in profile:
            line += (f"; CUDA peak allocated {mib['cuda_peak_allocated_bytes']:.1f} MiB, reserved "
                     f"{mib['cuda_peak_reserved_bytes']:.1f} MiB, step p50 {profile['step_ms_p50']:.2f} ms")
        print(line)
    print(f"ratios {result['ratio_of']}: " + ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()))
    if args.out is not None:
        write_json(args.out, *MEMORY_PROFILE, result)
        print(f"written {args.out}")


def _freeze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    _output(p, "--out", kind="file", required=True, help="frozen .safetensors")
    p.add_argument("--check-images", help="image set (.npz) for the equivalence check (default: random images)")


def _cmd_freeze(args: argparse.Namespace) -> None:
    _needs_torch()
    from mimicnorm_deploy.stages import freeze_stage

    report = freeze_stage(args.checkpoint, args.out, args.check_images)
    print(f"{args.out}: max |logit diff| {report.max_abs_diff:.3g} <= {report.tolerance:.3g}, "
          f"top-1 agreement {100 * report.top1_agreement:.1f}% on {report.check_images} images")  # fmt: skip


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("frozen")
    _output(p, "--out", kind="file", required=True, help="output .onnx")


def _cmd_export(args: argparse.Namespace) -> None:
    _needs_torch()
    from mimicnorm_deploy.stages import export_stage

    report = export_stage(args.frozen, args.out)
    print(f"{args.out}: opset {report.opset}, nodes {report.nodes}, "
          f"max |diff| vs torch {report.max_abs_diff_vs_torch:.2g}")  # fmt: skip


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="FP32 .onnx from export")
    p.add_argument("--calib", required=True, help="calibration image set (.npz from prepare-data)")
    _output(p, "--out", kind="file", required=True, help="output .onnx (beside it: .json record, .quality.md/.png, "
                   ".ranges.json, and .plan.json when gated)")  # fmt: skip
    p.add_argument("--per-channel", action="store_true", help="per-channel weight scales (default per-tensor)")
    p.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization first (exact in FP32; for BN-folded models quantized per tensor); "
                        "the equalized FP32 model is written beside --out as <out>.equalized.onnx")
    p.add_argument("--target", default=DEFAULT_TARGET, choices=list(TARGETS), metavar="TARGET",
                   help="where the model will run (default cpu: this machine's CPU with ONNX Runtime's encoding; "
                   "desktop-gpu and jetson-*: TensorRT's symmetric int8, full 8-bit weights and Q/DQ placement); "
                   "`mimicnorm-deploy targets` lists them")  # fmt: skip
    p.add_argument("--method", default="minmax", help="activation ranges: minmax, percentile, mse or entropy "
                   "(TensorRT's EntropyCalibration2 algorithm)")  # fmt: skip
    p.add_argument("--percentile", type=percentile, help="for --method percentile (default 99.99)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    gate = p.add_argument_group("mixed precision: the gate a plan must pass on held-out calibration images")
    gate.add_argument("--max-top1-drop", type=percentage_points, metavar="POINTS",
                      help="largest top-1 accuracy drop in percentage points (agreement with FP32 without labels)")
    gate.add_argument("--min-logits-sqnr", type=finite_float, metavar="DB", help="smallest logits SQNR against FP32")
    gate.add_argument("--holdout", type=non_negative_int, metavar="N", help="the last N calibration images measure "
                      "the gate and are not used for ranges (default: a quarter of the set, or the 3 / gate images a "
                      "top-1 gate needs, up to half; a gate the hold-out cannot resolve is refused)")  # fmt: skip
    p.add_argument("--high-precision", choices=["fp16", "fp32"],
                   help="type of everything outside INT8: the graph around the INT8 layers and a plan's moved layers "
                   "(default: fp16 for TensorRT targets, fp32 for cpu)")  # fmt: skip
    extra = p.add_argument_group("more artifacts from the same ranges")
    _output(extra, "--trt-cache", kind="file", help="TensorRT 10 calibration cache (same directory as --out)")
    extra.add_argument("--trt-version", metavar="X.Y[.Z]", help="TensorRT version on the device, written in the "
                       "cache header (TensorRT ignores a cache for another version; default: the target's first, "
                       "e.g. 10.3 on Jetson = JetPack 6)")  # fmt: skip
    _output(extra, "--fp16", kind="file", help="pure FP16 ONNX model, refused if a constant or activation "
            "overflows FP16 (same directory as --out)")  # fmt: skip
    extra.add_argument("--fp16-io", default="fp32", choices=["fp32", "fp16"],
                       help="input and output type of the --fp16 model (default fp32, behind Casts)")
    p.add_argument("--eval", help="labelled image set (.npz) for the quality report's accuracy")


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from mimicnorm_deploy.stages import CalibrateOptions, calibrate_stage

    options = CalibrateOptions(
        per_channel=args.per_channel, target=args.target, method=args.method, percentile=args.percentile,
        batch_size=args.batch_size, holdout=args.holdout, high_precision=args.high_precision,
        max_top1_drop=None if args.max_top1_drop is None else args.max_top1_drop / 100,
        min_logits_sqnr_db=args.min_logits_sqnr, trt_cache=args.trt_cache, trt_version=args.trt_version,
        fp16=args.fp16, fp16_io=args.fp16_io, eval_set=args.eval, equalize=args.equalize,
    )  # fmt: skip
    record = calibrate_stage(args.model, args.calib, args.out, options, progress=_progress)
    encoding, quality, plan = record["encoding"], record["quality"], record["plan"]
    worst = record["worst_weight_spread"]
    print(f"{args.out}: {record['method']} ranges on {record['calibration_images']} images, "
          f"{'per-channel' if args.per_channel else 'per-tensor'}, for {args.target} ({encoding['activations']} "
          f"activations, reduce_range={encoding['reduce_range']}, {encoding['placement']} Q/DQ placement, "
          f"{record['high_precision']} outside INT8); "
          f"worst weight-range spread {worst['spread']:.1f}x ({worst['node']})")  # fmt: skip
    if plan is not None:
        moved = ", ".join(m["node"] for m in plan["moved"]) or "none"
        print(f"plan: {len(plan['layers']) - len(plan['moved'])}/{len(plan['layers'])} layers in INT8, moved to "
              f"{plan['high_precision']}: {moved}; gate on {record['holdout_images']} held-out images: top-1 drop "
              f"{100 * plan['result']['top1_drop']:.2f} points, logits SQNR {plan['result']['logits_sqnr_db']:.1f} dB")
    accuracy = "" if quality["accuracy"] is None else (
        f", accuracy {100 * quality['accuracy']:.2f}% (FP32 {100 * quality['accuracy_fp32']:.2f}%)")  # fmt: skip
    print(f"quality on {quality['images']} images ({quality['image_set']}), simulated: logits SQNR "
          f"{quality['logits_sqnr_db']:.1f} dB, top-1 agreement {100 * quality['top1_agreement']:.2f}%{accuracy}")
    if quality["kernel_accuracy"] is not None:
        print(f"  with {quality['kernels']} kernels: accuracy {100 * quality['kernel_accuracy']:.2f}%")
    print(f"report: {Path(args.out).with_suffix('.quality.md')} (+ .png); record {Path(args.out).with_suffix('.json')}")
    for key, what in (("trt_cache", "TensorRT 10 calibration cache (+ .json sidecar keyed to the model)"),
                      ("fp16", "pure FP16 model")):  # fmt: skip
        if key in record:
            print(f"{record[key]}: {what}")


def _build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    _output(p, "--out", kind="directory", required=True, help="engine directory")
    p.add_argument("--backend", default=DEFAULT_BACKEND,
                   help=f"the runtime that builds and runs the engine (default {DEFAULT_BACKEND}): "
                   f"{', '.join(BACKENDS)}")  # fmt: skip
    _add_backend_flags(p)


def _backend_flags() -> dict[str, list[tuple[str, Flag]]]:
    """Every flag the backends declare (engines/<backend>/options.py FLAGS) -> [(backend, its declaration)]."""
    flags: dict[str, list[tuple[str, Flag]]] = {}
    for backend in BACKENDS:
        for flag in options_module(backend).FLAGS:
            flags.setdefault(flag.name, []).append((backend, flag))
    return flags


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    """Each backend's flags in its own group; a flag several backends declare (--precision) once,
    with each backend's help and all their choices."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, declared in _backend_flags().items():
        backend, flag = declared[0]
        if any((f.field, f.const, f.type) != (flag.field, flag.const, flag.type) for _, f in declared):
            raise ValueError(f"backends {[b for b, _ in declared]} declare {name} differently")
        if len(declared) == 1:
            if backend not in groups:
                groups[backend] = p.add_argument_group(f"{backend} options", BACKENDS[backend].summary)
            parser, help_text, choices = groups[backend], flag.help, flag.choices
        else:
            parser = p
            help_text = "; ".join(f"{b}: {f.help}" for b, f in declared)
            merged = [choice for _, f in declared for choice in f.choices or ()]
            choices = tuple(dict.fromkeys(merged)) or None
        if flag.const is not None:
            parser.add_argument(name, dest=flag.dest, action="store_const", const=flag.const, help=help_text)
        else:
            parser.add_argument(name, dest=flag.dest, type=flag.type, choices=choices, help=help_text)


def _backend_option_values(args: argparse.Namespace) -> dict:
    """The backend options the command line set (Options field -> value), whichever backend declares
    them; engines.registry.backend_options refuses those the chosen backend does not have."""
    values = {}
    for declared in _backend_flags().values():
        flag = declared[0][1]
        if getattr(args, flag.dest) is not None:
            values[flag.field] = getattr(args, flag.dest)
    return values


def _cmd_build(args: argparse.Namespace) -> None:
    from engines.registry import backend_options
    from mimicnorm_deploy.stages import build_stage

    options = backend_options(args.backend, **_backend_option_values(args))
    manifest = build_stage(args.model, args.out, backend=args.backend, options=options)
    print(f"{args.out}: {manifest.backend} {manifest.backend_version}, {manifest.precision} for target "
          f"{manifest.target}, backend options {manifest.backend_options}")  # fmt: skip


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engines", nargs="+", metavar="ENGINE", help="engine directories; several are timed in "
                   "interleaved rounds, so their ratios are measured under the same conditions")  # fmt: skip
    _output(p, "--out", kind="file", required=True, nargs="+", help="bench .json, one per engine")
    p.add_argument("--eval", help="labelled image set (.npz) for accuracy")
    p.add_argument("--reference", help="FP32 engine directory: top-1 agreement and SQNR against it")
    p.add_argument("--batch-sizes", type=batch_sizes_or_sweep, default=(1, 64),
                   help=f"comma-separated, or 'sweep' for {','.join(map(str, SWEEP_BATCH_SIZES))} up to what each "
                   "engine accepts")  # fmt: skip
    p.add_argument("--duration", type=positive_float, default=2.0,
                   help="timed seconds per engine and batch size (all rounds)")
    p.add_argument("--rounds", type=positive_int, help="interleaved rounds (default 1 for one engine, 5 for several)")
    p.add_argument("--no-latency", action="store_true", help="accuracy only")


def _bench_plan(args: argparse.Namespace) -> BenchPlan | None:
    if args.no_latency:
        return None
    sweep = args.batch_sizes == "sweep"
    batch_sizes = SWEEP_BATCH_SIZES if sweep else args.batch_sizes
    rounds = args.rounds if args.rounds is not None else (1 if len(args.engines) == 1 else 5)
    return BenchPlan(batch_sizes=batch_sizes, rounds=rounds, duration_s=args.duration, sweep=sweep)


def _cmd_bench(args: argparse.Namespace) -> None:
    from mimicnorm_deploy.evaluate import engine_logits
    from mimicnorm_deploy.stages import accuracy_stage, bench_io, bench_stage, check_engine_images

    plan = _bench_plan(args)
    if len(args.out) != len(args.engines):
        raise UserError(f"{len(args.engines)} engines but {len(args.out)} --out paths; pass one bench .json per engine")
    if args.reference is not None and args.eval is None:
        raise UserError("--reference needs --eval: agreement is measured on the evaluation images")
    bench_io(args.engines, args.out, eval_set=args.eval, reference=args.reference)
    reference = None
    if args.reference is not None:
        from engines.artifacts import load_image_set

        check_engine_images(args.reference, args.eval)
        reference = engine_logits(args.reference, load_image_set(args.eval)[0])
    scores = None
    if args.eval is not None:
        scores = [accuracy_stage(engine, args.eval, reference, _progress)[0] for engine in args.engines]
    records = bench_stage(args.engines, args.out, plan=plan, accuracy=scores, eval_set=args.eval, progress=_progress)
    for engine, out, record in zip(args.engines, args.out, records, strict=True):
        print(f"{engine}:")
        for r in record.get("latency", []):
            print(f"  batch {r['batch_size']:4d}: p50 {r['p50_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms, "
                  f"p99 {r['p99_ms']:.3f} ms, {r['throughput_ips']:.0f} img/s ({r['iterations']} iterations)")
        for batch, reason in record.get("skipped_batch_sizes", {}).items():
            print(f"  batch {batch:>4s}: skipped ({reason})")
        if record.get("latency") and "gpu_compute_ms" not in record["latency"][0]:
            print("  host latency only: this backend gives no device-side split (GPU compute, H2D, D2H)")
        if "accuracy" in record and record["accuracy"]["accuracy"] is not None:
            print(f"  accuracy {100 * record['accuracy']['accuracy']:.2f}% on {record['accuracy']['images']} images")
        print(f"  written {out}")
    if len(records) > 1 and plan is not None:
        print(f"compare them: mimicnorm-deploy compare {' '.join(args.out)}")


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="bench JSONs, run directories or report JSONs (e.g. imported trtexec results)")  # fmt: skip
    p.add_argument("--baseline", help="the input the others are compared against (default: the first)")
    p.add_argument("--html", help="also write the comparison as one self-contained HTML file")
    p.add_argument("--json", help="also write the comparison's pairs and intervals as JSON")
    p.add_argument("--tolerance", type=non_negative_float, default=100 * TOLERANCE, metavar="PCT",
                   help="a ratio whose interval stays within 1 +- PCT %% is no detectable difference (default "
                   f"{100 * TOLERANCE:.0f})")  # fmt: skip
    p.add_argument("--fail-if-slower", type=non_negative_float, metavar="PCT",
                   help="exit 1 if an engine is slower than in the baseline by more than PCT %% and the interval "
                   "lies above 1 (a CI regression gate)")  # fmt: skip


def _cmd_compare(args: argparse.Namespace) -> int:
    from engines.artifacts import atomic_write_text, write_json
    from engines.schemas import COMPARISON
    from mimicnorm_deploy.compare import compare_sources, render_html, render_markdown

    if args.fail_if_slower is not None and len(args.inputs) < 2:
        raise UserError("--fail-if-slower compares inputs against a baseline; pass two or more inputs")
    if not 0 <= args.tolerance < 100:
        raise UserError(f"--tolerance {args.tolerance}: give a percentage in [0, 100)")
    comparison = compare_sources(args.inputs, args.baseline, args.tolerance / 100)
    print(render_markdown(comparison), end="")
    if args.html:
        print(f"html: {atomic_write_text(args.html, render_html(comparison))}")
    if args.json:
        print(f"json: {write_json(args.json, *COMPARISON, comparison.to_dict())}")
    if args.fail_if_slower is None:
        return 0
    regressions = comparison.regressions(args.fail_if_slower / 100)
    for row in regressions:
        print(f"regression: {row.a.label} batch {row.batch_size} on {row.a.source} is {row.estimate.describe()} "
              f"than on {row.b.source}", file=sys.stderr)  # fmt: skip
    if regressions:
        print(f"error: {len(regressions)} engine(s) slower than the baseline by more than {args.fail_if_slower:g} %",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"no engine slower than the baseline by more than {args.fail_if_slower:g} %")
    return 0


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    _output(p, "--out", kind="directory", help="output directory (default RUN_DIR/report)")


def _cmd_report(args: argparse.Namespace) -> None:
    from mimicnorm_deploy.report import write_report

    for kind, path in write_report(args.run_dir, args.out).items():
        print(f"{kind}: {path}")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from mimicnorm_deploy.pipeline import DemoConfig  # torch-free; its defaults are the demo's

    _add_data_options(p)
    _output(p, "--out", kind="directory", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--arch", default=DemoConfig.arch,
                   help=f"default {DemoConfig.arch} (depthwise: BN-folded per-tensor INT8 collapses); or resnet20, ...")
    p.add_argument("--epochs", type=positive_float, default=DemoConfig.epochs)
    p.add_argument("--augment", action="store_true", help="random crop + flip (off: the demo's schedule is short)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--extended", action="store_true",
                   help="also the BN twin's per-tensor INT8 after cross-layer equalization and every INT8 engine "
                        "scored with Q/DQ simulated (about 1.5 min more on 2 cores)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a few steps per stage, for tests")


def _cmd_demo(args: argparse.Namespace) -> None:
    _needs_torch()
    from mimicnorm_deploy.pipeline import DemoConfig, run_demo

    StageIO("demo").output_dir(args.out, "run directory")  # each stage checks its own files as it goes
    config = DemoConfig(out=args.out, dataset=args.dataset or DEFAULT_DATASET, data_dir=args.data_dir,
                        image_size=args.image_size or DEFAULT_IMAGE_SIZE, arch=args.arch,
                        epochs=args.epochs, augment=args.augment, seed=args.seed, extended=args.extended,
                        quick=args.quick)  # fmt: skip
    paths = run_demo(config, _progress)
    print(Path(paths["markdown"]).read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def _bundle_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--target", required=True, choices=list(TARGETS), metavar="TARGET",
                   help="the device the bundle is for (e.g. jetson-orin-nx); `calibrate --target` lists them")
    _output(p, "--out", kind="file", required=True, help="bundle .tar.gz")
    p.add_argument("--test-set", action="store_true", help="also carry the labelled test images (data/test.npz)")


def _cmd_bundle(args: argparse.Namespace) -> None:
    from mimicnorm_deploy.bundle import write_bundle

    io = StageIO("bundle")
    io.input_dir(args.run_dir, "pass a run directory (the demo's --out, or the stages' directories)")
    io.output_file(args.out, "bundle")
    manifest = write_bundle(args.run_dir, args.target, args.out, test_set=args.test_set)
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    print(f"{args.out}: {len(manifest['files'])} files ({size / 2**20:.1f} MiB), "
          f"{len(manifest['engines'])} engines to build on {args.target}")  # fmt: skip
    for engine in manifest["engines"]:
        print(f"  {engine['name']}: {engine['kind']}")


def _unbundle_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle")
    _output(p, "--out", kind="directory", required=True, help="new directory to extract into")


def _cmd_unbundle(args: argparse.Namespace) -> None:
    from mimicnorm_deploy.bundle import extract_bundle

    io = StageIO("unbundle")
    io.input_file(args.bundle, "pass a .tar.gz written by 'mimicnorm-deploy bundle' or 'pack-results'")
    io.output_dir(args.out, "directory to extract into")
    manifest = extract_bundle(args.bundle, args.out)
    print(f"{args.out}: {len(manifest['files'])} files checked (sha256) for {manifest['target']['name']}")
    for engine in manifest["engines"]:
        print(f"  {engine['name']}: {engine['kind']}")


def _trtexec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="ONNX model: FP32 (alone or with --calib-cache), FP16 or Q/DQ")
    p.add_argument("--target", required=True, choices=[n for n, t in TARGETS.items() if t.backend == "tensorrt"],
                   metavar="TARGET", help="a TensorRT target: desktop-gpu, jetson-orin-agx|nx|nano[-dla0|1]")
    p.add_argument("--trt-version", help="TensorRT version the lines are for, e.g. 10.3 (default: the target's "
                   "oldest, JetPack 6's 10.3 on a Jetson); 11.x is always strongly typed")  # fmt: skip
    p.add_argument("--calib-cache", help="TensorRT 10 calibration cache for the FP32 model (implicit INT8)")
    p.add_argument("--plan", help="precision plan (.plan.json): its high-precision layers are pinned (TensorRT 10)")
    p.add_argument("--batch-sizes", type=positive_int_list, default=(1, 64),
                   help="one engine and benchmark per batch size (default 1,64)")
    p.add_argument("--out-dir", help="engines, logs and exports (default ARTIFACT without .onnx + .trtexec)")
    p.add_argument("--timing-cache", help="timing cache shared between builds (default OUT_DIR/timing.cache)")
    _output(p, "--write-script", kind="file", metavar="PATH", help="write a bash script instead of printing the lines")


def _cmd_trtexec(args: argparse.Namespace) -> None:
    import shlex

    from engines.artifacts import atomic_write_text
    from engines.targets import get_target
    from engines.tensorrt.trtexec import render_script, trtexec_lines


    io = StageIO("trtexec")
    io.input_file(args.artifact, "pass the .onnx model trtexec is to build")
    for extra in (args.calib_cache, args.plan):
        if extra is not None:
            io.input_file(extra, "pass the file calibrate wrote")
    if args.write_script:
        io.output_file(args.write_script, "script")
    batch_sizes = args.batch_sizes
    out_dir = args.out_dir or str(Path(args.artifact).with_suffix("")) + ".trtexec"
    lines = trtexec_lines(args.artifact, get_target(args.target), out_dir, trt_version=args.trt_version,
                          batch_sizes=batch_sizes, calibration_cache=args.calib_cache, plan=args.plan,
                          timing_cache=args.timing_cache)  # fmt: skip
    if args.write_script:
        atomic_write_text(args.write_script, render_script(lines, out_dir, batch_sizes))
        Path(args.write_script).chmod(0o755)
        print(f"written {args.write_script}")
    else:
        for line in lines:
            print(shlex.join(["trtexec", *line]))


def _import_trtexec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--times", required=True, action="append", help="--exportTimes file (repeat: one per batch size)")
    p.add_argument("--log", action="append", help="trtexec's output for each --times, same order (GPU, TensorRT "
                   "version, batch shape, device memory)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, help="batch of a single --times file imported without its log")
    p.add_argument("--profile", help="--exportProfile file: per-layer times")
    p.add_argument("--layers", help="--exportLayerInfo file: per-layer types and precisions")
    p.add_argument("--target", choices=list(TARGETS), metavar="TARGET", help="the target the engine was built for")
    p.add_argument("--fingerprint", action="store_true", help="trtexec ran on this machine: record its environment "
                   "(CPU, load, libraries, Jetson power mode and clocks) in the bench JSON")  # fmt: skip
    _output(p, "--out", kind="file", required=True, help="bench .json")


def _cmd_import_trtexec(args: argparse.Namespace) -> None:
    from engines.artifacts import write_json
    from engines.schemas import BENCH
    from engines.trtexec_import import TrtexecRun, bench_record


    logs = args.log or []
    io = StageIO("import-trtexec")
    for path in [*args.times, *logs, *(p for p in (args.profile, args.layers) if p is not None)]:
        io.input_file(path, "pass the file trtexec exported (--exportTimes, --exportProfile, --exportLayerInfo) "
                      "or its saved output")  # fmt: skip
    io.output_file(args.out, "bench record")
    if logs and len(logs) != len(args.times):
        raise UserError(f"{len(args.times)} --times but {len(logs)} --log; pass one --log per --times, same order")
    if args.batch_size is not None and len(args.times) > 1:
        raise UserError("--batch-size names the batch of a single --times file; with several, pass their --log files")
    runs = [TrtexecRun(times, logs[i] if logs else None, args.batch_size) for i, times in enumerate(args.times)]
    record = bench_record(runs, profile=args.profile, layers=args.layers, target=args.target)
    if args.fingerprint:
        from engines.fingerprint import environment_fingerprint

        record["environment"] = environment_fingerprint()
    write_json(args.out, *BENCH, record)
    for r in record["latency"]:
        print(f"batch {r['batch_size']:4d}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, "
              f"{r['throughput_ips']:.0f} img/s ({r['iterations']} queries, trtexec)")  # fmt: skip
    print(f"written {args.out}")


def _import_tegrastats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bench", required=True, help="bench .json to update (its entry at --batch-size)")
    p.add_argument("--log", required=True, help="tegrastats output, sampled while the engine ran at --batch-size")
    p.add_argument("--batch-size", type=positive_int, required=True)


def _cmd_import_tegrastats(args: argparse.Namespace) -> None:
    from engines.artifacts import read_json, write_json
    from engines.jetson import BOARD_RAIL, attach_power
    from engines.schemas import BENCH

    log = Path(args.log)
    if not log.is_file():
        raise UserError(f"{log}: no such tegrastats log; save tegrastats' output while the engine runs")
    record = read_json(args.bench, *BENCH)
    body = {key: value for key, value in record.items() if key not in ("schema", "schema_version")}
    attach_power(body, args.batch_size, log.read_text(errors="replace").splitlines(), str(log))
    write_json(args.bench, *BENCH, body)
    power = next(e["power"] for e in body["latency"] if e["batch_size"] == args.batch_size)
    energy = power.get("energy_per_image_mj")
    print(f"batch {args.batch_size}: mean {BOARD_RAIL} {power['mean_power_mw'].get(BOARD_RAIL, 'n/a')} mW over "
          f"{power['samples']} samples" + ("" if energy is None else f", {energy:.3f} mJ/image"))  # fmt: skip


def _pack_results_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dir", help="<norm>/bench/<variant>.json files, logs and device facts")
    p.add_argument("--target", required=True, choices=list(TARGETS), metavar="TARGET")
    _output(p, "--out", kind="file", required=True, help="results .tar.gz")


def _cmd_pack_results(args: argparse.Namespace) -> None:
    from mimicnorm_deploy.device_results import SUMMARY_NAME, pack_results

    io = StageIO("pack-results")
    io.input_dir(args.results_dir, "pass the directory holding <norm>/bench/<variant>.json")
    io.output_file(args.out, "results archive")
    manifest = pack_results(args.results_dir, args.target, args.out)
    print(Path(args.results_dir, SUMMARY_NAME).read_text(), end="")
    print(f"{args.out}: {len(manifest['files'])} files; on the workstation: mimicnorm-deploy unbundle {args.out} "
          f"--out RUN_DIR/devices/{args.target}, then mimicnorm-deploy report RUN_DIR")  # fmt: skip


def _targets_arguments(p: argparse.ArgumentParser) -> None:
    """No arguments: the list is engines/targets.py."""


def _cmd_targets(args: argparse.Namespace) -> None:
    from engines.targets import TARGETS

    rows = [("target", "backend", "device", "INT8 encoding", "workspace", "TensorRT", "description")]
    for t in TARGETS.values():
        workspace = f"{t.workspace_mib} MiB" if t.workspace_mib is not None else "-"
        versions = ", ".join(t.tensorrt_versions) or "-"
        rows.append((t.name, t.backend, t.device, t.int8_encoding or "-", workspace, versions, t.description))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[argparse.Namespace], None]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    help: str


# A new command: its `_cmd_X` and `_X_arguments` above and one line here (the order of `--help`).
COMMANDS = [
    Command("demo", _cmd_demo, _demo_arguments,
            "the main job: train MimicNorm + BN twin, freeze, export, INT8, bench, report"),
    Command("models", _cmd_models, _models_arguments, "list the registered architectures with parameters and MACs"),
    Command("prepare-data", _cmd_prepare_data, _prepare_data_arguments,
            "write calibration (training split) and test image sets"),
    Command("train", _cmd_train, _train_arguments,
            "train one model (multi-GPU/-node: torchrun --nproc_per_node N -m mimicnorm_deploy train ...)"),
    Command("profile-memory", _cmd_profile_memory, _profile_memory_arguments,
            "training memory of one model, MimicNorm vs its BN twin"),
    Command("freeze", _cmd_freeze, _freeze_arguments,
            "fold a trained checkpoint into plain conv+bias kernels (checked)"),
    Command("export", _cmd_export, _export_arguments, "export a frozen checkpoint to ONNX"),
    Command("calibrate", _cmd_calibrate, _calibrate_arguments,
            "INT8 (or gated INT8/FP16/FP32) Q/DQ ONNX for a target, with a quality report"),
    Command("build", _cmd_build, _build_arguments, "build an engine directory with one backend"),
    Command("bench", _cmd_bench, _bench_arguments, "latency, memory and accuracy of an engine"),
    Command("compare", _cmd_compare, _compare_arguments,
            "latency ratios with bootstrap intervals across runs, precisions and machines; a regression gate"),
    Command("report", _cmd_report, _report_arguments, "JSON + Markdown + PNG report of a run directory"),
    Command("targets", _cmd_targets, _targets_arguments,
            "list the targets (where a model runs: backend, device, INT8 encoding, limits)"),
    Command("bundle", _cmd_bundle, _bundle_arguments,
            "pack what a target needs from a run directory into one checked archive"),
    Command("unbundle", _cmd_unbundle, _unbundle_arguments,
            "check every file of a bundle (sha256) and extract it, all or nothing"),
    Command("trtexec", _cmd_trtexec, _trtexec_arguments,
            "the trtexec command lines that build and benchmark an artifact on a target"),
    Command("import-trtexec", _cmd_import_trtexec, _import_trtexec_arguments,
            "turn trtexec's exported files and log into a bench JSON"),
    Command("import-tegrastats", _cmd_import_tegrastats, _import_tegrastats_arguments,
            "add the power a tegrastats log sampled to a bench JSON entry"),
    Command("pack-results", _cmd_pack_results, _pack_results_arguments,
            "summarise a device's bench results and pack them to carry home"),
]  # fmt: skip


DEBUG_HELP = "print the traceback of a failure above its one-line error (to report a bug)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="mimicnorm-deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
        # default SUPPRESS: `--debug` after the command must not reset the one given before it.
        sub.choices[command.name].add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                               help=DEBUG_HELP)  # fmt: skip
        sub.choices[command.name].set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit status 0 (or the command's own, e.g. compare's regression gate), 2 (bad input, one
    `error:` line), 130 (interrupted) or 70 (a bug: one `error: internal error` line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Known before parsing, so even a failure inside argparse's own machinery honours it.
    debug = "--debug" in argv
    return run_cli(lambda: build_parser().parse_args(argv), debug)


if __name__ == "__main__":
    sys.exit(main())
