#!/usr/bin/env python3
"""The parts of the GPU check (scripts/gpu_check.py runs each in its own process):

    python scripts/gpu_check_parts.py PART [ARGS...] SETTINGS_JSON RESULT_JSON

PART is environment, train_memory ARCH NORM, train_run, ddp_worker (under torchrun), inference or
cuda_runtime. Each writes RESULT_JSON: {"status": "ok" | "failed" | "skipped", ...}; a part
stops starting new work once the settings' deadline passes and lists what it left out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import Settings  # noqa: E402

from engines.cpu import cpu_features  # noqa: E402
from engines.torch.device import process_device_memory  # noqa: E402

SMI_QUERY = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]


def _past(settings: Settings) -> bool:
    return time.time() >= settings.deadline


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- environment ---------------------------------------------------------------------------------


def environment(settings: Settings) -> dict:
    cuda = torch.cuda.is_available()
    result = {
        "status": "ok",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_device_count": torch.cuda.device_count() if cuda else 0,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "cuda_bindings": importlib.util.find_spec("cuda") is not None
        and importlib.util.find_spec("cuda.bindings") is not None,
        "nvidia_ml_py": importlib.util.find_spec("pynvml") is not None,
        "cpu": cpu_features().model_name,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        result.update(device_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                      device_memory_bytes=int(props.total_memory))  # fmt: skip
        result["driver"] = _driver_version()
    result["summary"] = f"{result.get('device_name', 'no CUDA device')}, torch {torch.__version__}"
    return result


def _driver_version() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        completed = subprocess.run([smi, *SMI_QUERY], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = completed.stdout.strip().splitlines() if completed.returncode == 0 else []
    fields = lines[0].split(", ") if lines else []
    return fields[1] if len(fields) > 1 else None


# --- train_memory --------------------------------------------------------------------------------


def train_memory(settings: Settings, arch: str, norm: str) -> dict:
    """One training step per precision for one family and norm, in this fresh process."""
    from mimicnorm_deploy.training.memory import profile_memory

    rows, skipped = [], []
    for amp in settings.memory_amps:
        if _past(settings):
            skipped.append(amp)
            continue
        row = profile_memory(arch, norm, settings.memory_batch, settings.input_size, 3, settings.num_classes,
                             settings.device, amp=amp, timed_steps=settings.memory_timed_steps)  # fmt: skip
        # Read right after the step, while the allocator still holds its cache: what nvidia-smi
        # showed the paper's authors (context + cache + library workspaces).
        row["gpu_process_bytes"], row["gpu_process_source"] = (
            process_device_memory() if settings.device == "cuda" else (None, "not measured")
        )
        if settings.device == "cuda":
            # Every process's memory on the device (nvidia-smi's Memory-Usage line): this part runs
            # alone, so it is this process plus the driver's own, even where NVML cannot see the PID.
            free, total = torch.cuda.mem_get_info()
            row["gpu_device_used_bytes"] = total - free
        rows.append(row)
        print(f"{arch}/{norm}/{amp}: {row.get('cuda_peak_allocated_bytes', row['training_bytes']) / 2**20:.0f} MiB",
              flush=True)  # fmt: skip
    result = {"status": "ok", "rows": rows}
    if skipped:
        result["skipped_amps"] = skipped
        result["reason"] = f"out of time before {', '.join(skipped)}"
    return result


# --- train_run and ddp_worker ----------------------------------------------------------------------


def _train_config(settings: Settings, dataset_size: int):
    from mimicnorm_deploy.training.train import TrainConfig

    steps_per_epoch = max(1, dataset_size // settings.train_batch)
    return TrainConfig(
        arch=settings.train_arch, norm="mimic", epochs=settings.train_steps / steps_per_epoch,
        batch_size=settings.train_batch, device=settings.device, amp=settings.train_amp, augment=False,
        warmup_epochs=0.1 * settings.train_steps / steps_per_epoch, channels_last=settings.device == "cuda",
    )  # fmt: skip


def _synthetic(settings: Settings):
    from mimicnorm_deploy.training.data import make_synthetic

    # Up to 30 distinct steps per epoch and at least two epochs, so the loss can be seen to fall.
    size = settings.train_batch * max(1, min(30, settings.train_steps // 2))
    return make_synthetic(size, num_classes=4, image_size=settings.train_image_size, seed=0)


def _train_summary(trainer, result) -> dict:
    losses = [epoch["train_loss"] for epoch in result.epochs]
    finite = bool(np.isfinite(losses).all())
    summary = {
        "steps": trainer.step,
        "world_size": result.world_size,
        "first_epoch_loss": losses[0],
        "final_train_loss": result.final_train_loss,
        "final_test_accuracy": result.final_test_accuracy,
        "step_ms_p50": result.step_ms_percentiles.get("p50"),
        "grad_scaler_scale": float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else None,
        "loss_finite": finite,
        "loss_decreased": finite and losses[-1] < losses[0],
    }
    summary["status"] = "ok" if summary["loss_decreased"] else "failed"
    summary["summary"] = (f"{summary['steps']} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                          f"test accuracy {result.final_test_accuracy:.3f}")  # fmt: skip
    return summary


def train_run(settings: Settings) -> dict:
    from mimicnorm_deploy.training.train import Trainer

    dataset = _synthetic(settings)
    trainer = Trainer(_train_config(settings, len(dataset.train_images)), dataset,
                      Path(settings.work_dir) / "train_run", progress=lambda line: print(line, flush=True))  # fmt: skip
    result = trainer.fit()
    return {**_train_summary(trainer, result), "amp": settings.train_amp, "arch": settings.train_arch}


def ddp_worker(settings: Settings) -> dict | None:
    """Under torchrun: the trainer with its network in DistributedDataParallel. Alone (one GPU),
    the trainer skips the process group, so the group (NCCL on CUDA) and the wrapper are made
    here around its model; with several ranks the trainer makes both itself."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mimicnorm_deploy.training.train import Trainer

    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    cuda = settings.device == "cuda"
    if world_size == 1:
        if cuda:
            torch.cuda.set_device(0)
        dist.init_process_group("nccl" if cuda else "gloo")
    dataset = _synthetic(settings)
    trainer = Trainer(_train_config(settings, len(dataset.train_images)), dataset,
                      Path(settings.work_dir) / "ddp", progress=lambda line: print(line, flush=True))  # fmt: skip
    if world_size == 1:
        trainer.net = DistributedDataParallel(trainer.model, device_ids=[0] if cuda else None)
    probe = torch.full((1,), float(rank + 1), device=trainer.device)
    dist.all_reduce(probe)
    expected = world_size * (world_size + 1) / 2
    result = trainer.fit()
    backend = dist.get_backend()
    dist.destroy_process_group()
    if rank != 0:
        return None
    summary = _train_summary(trainer, result)
    summary.update(backend=backend, world_size=world_size, all_reduce_ok=float(probe.item()) == expected,
                   wrapped_in=type(trainer.net).__name__)  # fmt: skip
    if not summary["all_reduce_ok"]:
        summary["status"] = "failed"
    summary["summary"] = f"{backend}, {world_size} rank(s), " + summary["summary"]
    return summary


# --- inference ---------------------------------------------------------------------------------------


def _frozen_twin(settings: Settings, arch: str, norm: str, directory: Path) -> Path:
    """A randomly initialised `arch`/`norm` model frozen into its plain twin (latency and memory
    do not depend on the weights' values)."""
    from mimicnorm_deploy.training.checkpoint import CheckpointMeta, save_checkpoint
    from mimicnorm_deploy.training.freeze import freeze_checkpoint

    meta = CheckpointMeta(arch, norm, settings.num_classes, 3, settings.input_size, [0.5] * 3, [0.25] * 3,
                          [str(i) for i in range(settings.num_classes)], "random")  # fmt: skip
    torch.manual_seed(0)
    checkpoint = save_checkpoint(directory / f"{arch}-{norm}.safetensors", meta.build_model(), meta)
    frozen = directory / f"{arch}-{norm}.frozen.safetensors"
    freeze_checkpoint(checkpoint, frozen)
    return frozen


def _measure_engine(runner, batch: int, settings: Settings) -> tuple[dict, np.ndarray]:
    """Latency at `batch` through the shared harness (host samples and the CUDA-event split, kept
    as medians), and the logits of a fixed batch."""
    from engines.bench import DEVICE_TIMING_KEYS, benchmark_feeds, measure_latency

    latency = measure_latency(runner, batch, warmup_s=0.2, min_iterations=10,
                              min_duration_s=settings.inference_duration_s)  # fmt: skip
    raw_lists = {"samples_ms", *DEVICE_TIMING_KEYS}  # summarised: the JSON stays small
    row = {key: value for key, value in latency.to_dict().items() if key not in raw_lists}
    row["timing_p50_ms"] = {key: float(np.median(getattr(latency, key))) for key in latency.device_timing_keys()}
    logits = runner.infer(benchmark_feeds(runner, batch, seed=1))[runner.outputs[0].name]
    return row, logits


def inference(settings: Settings) -> dict:
    from engines.torch import Options, Runner, build_engine

    work = Path(settings.work_dir) / "inference"
    work.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for arch in settings.inference_archs:
        for norm in settings.inference_norms:
            frozen = _frozen_twin(settings, arch, norm, work)
            references: dict[int, np.ndarray] = {}
            for config in settings.inference_configs:
                label = f"{arch}/{norm}/{config['mode']}/{config['precision']}"
                if _past(settings):
                    skipped.append(label)
                    continue
                options = Options(device=settings.device, **config)
                engine_dir = work / "engine"
                build_engine(frozen, engine_dir, options)
                with Runner(engine_dir) as runner:
                    for batch in settings.inference_batches:
                        row, logits = _measure_engine(runner, batch, settings)
                        # The first configuration (fp32 eager) is the reference the others are held to.
                        reference = references.setdefault(batch, logits)
                        row.update(arch=arch, norm=norm, **config, memory=runner.memory(),
                                   max_abs_diff_vs_fp32=float(np.abs(logits - reference).max()))  # fmt: skip
                        rows.append(row)
                        print(f"{label} batch {batch}: p50 {row['p50_ms']:.3f} ms", flush=True)
    result = {"status": "ok", "rows": rows, "summary": f"{len(rows)} engine x batch measurements"}
    if skipped:
        result["skipped"] = skipped
        result["reason"] = f"out of time before {len(skipped)} engine(s)"
    return result


# --- cuda_runtime -------------------------------------------------------------------------------------


def cuda_runtime(settings: Settings) -> dict:
    """engines/tensorrt's Runner run for real on this GPU with TensorRT replaced by a stand-in
    (scripts/gpu_check_tensorrt_standin.py: execute_async_v3 is a torch kernel on the runner's
    stream): pinned and device buffers per shape, copies, stream, events, CUDA-graph replay."""
    if settings.device != "cuda":
        return {"status": "skipped", "reason": "needs CUDA (dry run)"}
    import gpu_check_tensorrt_standin as standin

    from engines.errors import UserError
    from engines.tensorrt.cuda import load_cuda

    try:
        cuda = load_cuda()
    except UserError as exc:
        return {"status": "skipped", "reason": str(exc)}
    torch.cuda.init()  # torch's kernels and the binding's calls share the device's primary context
    standin.install()
    from engines.tensorrt import Runner

    image_shape = (3, settings.input_size, settings.input_size)
    max_batch = max(settings.inference_batches)
    rows, failures = [], []
    # Graph capture is cuda-python only (the runner refuses it over pycuda with a one-line error).
    graph_modes = (False, True) if cuda.name == "cuda-python" else (False,)
    for cuda_graph in graph_modes:
        engine_dir = Path(settings.work_dir) / f"standin-{'graph' if cuda_graph else 'plain'}"
        standin.write_engine(engine_dir, cuda, image_shape, max_batch, cuda_graph)
        try:
            rows += _run_standin(Runner(engine_dir), settings, image_shape, cuda_graph)
        except (UserError, RuntimeError) as exc:
            failures.append(f"cuda_graph={cuda_graph}: {type(exc).__name__}: {exc}")
    mismatched = sum(row["mismatched_iterations"] for row in rows)
    status = "ok" if rows and not mismatched and not failures else "failed"
    return {
        "status": status, "interface": f"engines.tensorrt.Runner over engines.tensorrt.cuda ({cuda.name})",
        "rows": rows, "failures": failures, "graph_replay": True in graph_modes,
        "summary": f"{len(rows)} stand-in runs over {cuda.name}, {mismatched} wrong outputs"
                   + (f"; {len(failures)} failed" if failures else ""),
    }  # fmt: skip


def _run_standin(runner, settings: Settings, image_shape: tuple[int, ...], cuda_graph: bool) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    with runner:
        # The last batch size again: the buffers (and graph) of a shape seen before are reused.
        for batch in [*settings.inference_batches, settings.inference_batches[0]]:
            splits, mismatches = [], 0
            for _ in range(settings.cuda_runtime_iterations):
                images = rng.random((batch, *image_shape), dtype=np.float32)
                logits = runner.infer({"images": images})["logits"]
                mismatches += int(not np.allclose(logits, 2.0 * images + 1.0))
                splits.append(runner.timing())
            medians = {key: float(np.median([split[key] for split in splits])) for key in splits[0]}
            rows.append({"cuda_graph": cuda_graph, "batch_size": batch, "mismatched_iterations": mismatches,
                         "iterations": settings.cuda_runtime_iterations, "timing_p50_ms": medians,
                         "memory": runner.memory()})  # fmt: skip
            print(f"stand-in cuda_graph={cuda_graph} batch {batch}: {mismatches} mismatches, {medians}", flush=True)
    return rows


# --- entry point ------------------------------------------------------------------------------------

PARTS = {
    "environment": environment,
    "train_memory": train_memory,
    "train_run": train_run,
    "ddp_worker": ddp_worker,
    "inference": inference,
    "cuda_runtime": cuda_runtime,
}


def main(argv: list[str]) -> int:
    part, *arguments, settings_file, result_file = argv
    settings = Settings.from_json(Path(settings_file).read_text())
    try:
        result = PARTS[part](settings, *arguments)
    except Exception as exc:  # noqa: BLE001 - any failure is this part's result, reported with its traceback
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        if part == "ddp_worker" and int(os.environ.get("RANK", "0")) != 0:
            return 1
    if result is not None:
        with tempfile.NamedTemporaryFile("w", dir=Path(result_file).parent, delete=False) as handle:
            json.dump(result, handle, default=float)
        os.replace(handle.name, result_file)
    return 0 if result is None or result["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
