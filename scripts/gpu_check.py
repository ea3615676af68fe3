#!/usr/bin/env python3
"""The GPU check: every CUDA path of the toolkit run for real, with its figures, in under 8 minutes.

    scripts/gpu_check.sh OUT_DIR [--dry-run] [--budget-s 400] [--parts a,b,...]

Parts, each in its own process (a fresh CUDA context, so one part's cache or crash does not
colour the next) under a share of the time budget:
- environment: torch, CUDA, cuDNN, NCCL, driver and GPU, the optional CUDA bindings;
- train_memory: one training step per family x norm (MimicNorm, BN, BN-revisited) x precision
  (fp32, fp16 autocast + GradScaler, bf16) at the paper's settings (batch 256, 32x32x3, 100
  classes): peak allocated and reserved bytes, the process's device memory as NVML/nvidia-smi
  report it (the paper's measure), step time; one process per family and norm;
- train_run: a short real training run (a few hundred steps) with fp16 + GradScaler;
- ddp: the trainer under torchrun with NCCL (on one GPU: its network in DistributedDataParallel
  over an NCCL group of one, since the trainer itself skips the group when alone);
- inference: frozen twins through the torch backend (FP32, FP16, CUDA graphs) at batch 1 and 256:
  host latency, CUDA-event split, memory;
- cuda_runtime: engines/tensorrt's Runner for real with TensorRT replaced by a stand-in whose
  execute_async_v3 is a torch kernel on the runner's stream: its CUDA half (pinned and device
  buffers per shape, copies, stream, events, CUDA-graph replay, over cuda.bindings or pycuda)
  proven on the GPU, TensorRT itself not.

Writes OUT_DIR/gpu_check.json, OUT_DIR/gpu_check.md and OUT_DIR/gpu_check.log. Needs torch,
numpy and safetensors; no network. `--dry-run` runs every part on the CPU at toy sizes: it proves
the plumbing (the tests use it), not the CUDA paths. Exit status 0 when every part passed or was
skipped for a stated reason, 1 when one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engines.artifacts import atomic_write_text, write_json  # noqa: E402
from engines.errors import UserError  # noqa: E402
from engines.schemas import GPU_CHECK  # noqa: E402
from mimicnorm_deploy.paper import memory_change_percent  # noqa: E402

PARTS_SCRIPT = Path(__file__).resolve().parent / "gpu_check_parts.py"
REQUIRED_MODULES = ("torch", "numpy", "safetensors")
DEFAULT_BUDGET_S = 400  # plus at most GRACE_S per part: the whole stays under 8 minutes
GRACE_S = 10  # a part past its deadline finishes the item in hand, then is killed
LOG_TAIL_LINES = 15


@dataclass
class Settings:
    """What every part reads; `deadline` (time.time()) is set per part by the orchestrator."""

    device: str
    memory_archs: list[str]
    memory_norms: list[str]
    memory_amps: list[str]
    memory_batch: int
    memory_timed_steps: int
    input_size: int
    num_classes: int
    train_arch: str
    train_amp: str
    train_batch: int
    train_steps: int
    train_image_size: int
    inference_archs: list[str]
    inference_norms: list[str]
    inference_configs: list[dict]  # torch backend Options fields (device filled in per run)
    inference_batches: list[int]
    inference_duration_s: float
    cuda_runtime_iterations: int
    work_dir: str = ""
    deadline: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return cls(**json.loads(text))


def gpu_settings() -> Settings:
    """The paper's settings on a CUDA device."""
    return Settings(
        device="cuda",
        # Ordered by what the paper's table covers first: a part out of time drops the last ones.
        memory_archs=["resnet18", "resnet50", "vgg16", "shufflenetv2_100", "squeezenet1_1", "mobilenetv2_100"],
        memory_norms=["mimic", "bn", "bn-revisited"],
        memory_amps=["off", "fp16", "bf16"],
        memory_batch=256,
        memory_timed_steps=5,
        input_size=32,
        num_classes=100,
        train_arch="resnet20",
        train_amp="fp16",
        train_batch=128,
        train_steps=300,
        train_image_size=32,
        inference_archs=["resnet18", "mobilenetv2_100"],
        inference_norms=["mimic", "bn"],
        inference_configs=[
            {"mode": "eager", "precision": "fp32", "channels_last": False},
            {"mode": "eager", "precision": "fp16", "channels_last": True},
            {"mode": "cuda-graph", "precision": "fp32", "channels_last": False},
            {"mode": "cuda-graph", "precision": "fp16", "channels_last": True},
        ],
        inference_batches=[1, 256],
        inference_duration_s=1.0,
        cuda_runtime_iterations=50,
    )


def dry_run_settings() -> Settings:
    """Toy sizes on the CPU: every part's plumbing in about a minute, no CUDA path."""
    return dataclasses.replace(
        gpu_settings(),
        device="cpu",
        memory_archs=["resnet20"],
        memory_norms=["mimic", "bn"],
        memory_amps=["off", "bf16"],  # fp16 autocast needs CUDA
        memory_batch=2,
        memory_timed_steps=1,
        input_size=16,
        num_classes=10,
        train_amp="off",  # the fp16 GradScaler path needs CUDA
        train_batch=8,
        train_steps=8,
        train_image_size=16,
        inference_archs=["resnet20"],
        inference_norms=["mimic"],
        inference_configs=[
            {"mode": "eager", "precision": "fp32", "channels_last": False},
            {"mode": "eager", "precision": "bf16", "channels_last": True},
        ],
        inference_batches=[1, 2],
        inference_duration_s=0.05,
        cuda_runtime_iterations=2,
    )


# --- Parts and their time shares ---------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    name: str
    share: float  # of the budget; a part's deadline is the sum of the shares up to it
    units: Callable[[Settings], list[list[str]]]  # argument lists, one process each


def _single(name: str) -> Callable[[Settings], list[list[str]]]:
    return lambda settings: [[name]]


def _memory_units(settings: Settings) -> list[list[str]]:
    return [["train_memory", arch, norm] for arch in settings.memory_archs for norm in settings.memory_norms]


PARTS = (
    Part("environment", 0.05, _single("environment")),
    Part("train_memory", 0.45, _memory_units),
    Part("train_run", 0.12, _single("train_run")),
    Part("ddp", 0.12, _single("ddp")),
    Part("inference", 0.21, _single("inference")),
    Part("cuda_runtime", 0.05, _single("cuda_runtime")),
)
PART_NAMES = tuple(part.name for part in PARTS)


def part_deadlines(start: float, budget_s: float, names: list[str]) -> dict[str, float]:
    """Each selected part's deadline: the budget is split by share over the selected parts, and
    a part that finishes early leaves its time to the next."""
    selected = [part for part in PARTS if part.name in names]
    total_share = sum(part.share for part in selected)
    deadlines, elapsed_share = {}, 0.0
    for part in selected:
        elapsed_share += part.share
        deadlines[part.name] = start + budget_s * elapsed_share / total_share
    return deadlines


def command_for(unit: list[str], settings_file: Path, result_file: Path, settings: Settings) -> list[str]:
    """The process that runs one unit: the DDP part under torchrun, the rest as plain Python."""
    if unit[0] == "ddp":
        # torchrun's own module, so no PATH lookup; one rank per GPU, at most two (one on a CPU).
        ranks = int(settings.extra.get("ddp_ranks", 1))
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        return [*launcher, str(PARTS_SCRIPT), "ddp_worker", str(settings_file), str(result_file)]
    return [sys.executable, str(PARTS_SCRIPT), *unit, str(settings_file), str(result_file)]


def run_unit(unit: list[str], settings: Settings, deadline: float, work: Path, log) -> dict:
    """Run one unit's process until `deadline` (+ grace); its result, or why there is none."""
    label = "/".join(unit)
    settings_file = work / f"{'-'.join(unit)}.settings.json"
    result_file = work / f"{'-'.join(unit)}.result.json"
    settings_file.write_text(dataclasses.replace(settings, deadline=deadline).to_json())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if settings.device == "cpu":
        # The dry run proves plumbing, not speed: one thread per process keeps it quick on a busy CPU,
        # where OpenMP's barriers across oversubscribed cores slow every op by orders of magnitude.
        env.setdefault("OMP_NUM_THREADS", "1")
    log.write(f"\n===== {label} =====\n")
    log.flush()
    timeout = max(1.0, deadline - time.time() + GRACE_S)
    try:
        completed = subprocess.run(
            command_for(unit, settings_file, result_file, settings),
            stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "reason": f"killed after {timeout:.0f} s (its share of the budget)"}
    if result_file.is_file():
        return json.loads(result_file.read_text())
    return {"status": "failed", "reason": f"exit status {completed.returncode} and no result; see gpu_check.log"}


def run_check(out_dir: Path, settings: Settings, budget_s: float, names: list[str], progress=print) -> dict:
    start = time.time()
    deadlines = part_deadlines(start, budget_s, names)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as work_dir, open(out_dir / "gpu_check.log", "w") as log:
        settings = dataclasses.replace(settings, work_dir=work_dir)
        for part in (part for part in PARTS if part.name in names):
            units = part.units(settings)
            unit_results = []
            for unit in units:
                label = "/".join(unit)
                if time.time() >= deadlines[part.name]:
                    unit_results.append({"unit": label, "status": "skipped", "reason": "out of its time budget"})
                    continue
                progress(f"[{time.time() - start:6.1f} s] {label} ...")
                result = {"unit": label, **run_unit(unit, settings, deadlines[part.name], Path(work_dir), log)}
                progress(f"[{time.time() - start:6.1f} s] {label}: {result['status']}"
                         + (f" ({result['reason']})" if result.get("reason") else ""))  # fmt: skip
                unit_results.append(result)
                if part.name == "environment":
                    settings = _apply_environment(settings, result)
            results[part.name] = unit_results[0] if len(units) == 1 else {"units": unit_results}
    return {"settings": dataclasses.asdict(settings) | {"work_dir": None, "deadline": None},
            "budget_s": budget_s, "elapsed_s": round(time.time() - start, 1), "parts": results}  # fmt: skip


def _apply_environment(settings: Settings, environment: dict) -> Settings:
    if environment.get("status") != "ok":
        return settings
    if settings.device == "cuda" and not environment.get("cuda_available"):
        raise UserError("PyTorch sees no CUDA device here; run on a GPU machine, or pass --dry-run for the CPU check")
    ranks = min(2, environment.get("cuda_device_count") or 1) if settings.device == "cuda" else 1
    return dataclasses.replace(settings, extra={**settings.extra, "ddp_ranks": ranks})


def part_statuses(report: dict) -> dict[str, str]:
    """One word per part: ok, failed, skipped or timed out (a part of several units: the worst)."""
    order = ("failed", "timed out", "skipped", "ok")
    statuses = {}
    for name, result in report["parts"].items():
        found = [unit["status"] for unit in result["units"]] if "units" in result else [result["status"]]
        statuses[name] = next((status for status in order if status in found), found[0])
    return statuses


# --- Markdown ------------------------------------------------------------------------------------


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def _ratio(a, b) -> str:
    return "n/a" if a is None or not b else f"{a / b:.3f}"


def memory_rows(report: dict) -> list[dict]:
    part = report["parts"].get("train_memory", {})
    return [row for unit in part.get("units", []) for row in unit.get("rows", [])]


MEMORY_TABLE_NOTE = (
    "Process device memory (NVML / nvidia-smi; where they cannot see the process, the device's memory in use "
    "while the part ran alone), the allocator's peak reserved and peak allocated MiB per norm, "
    "then MimicNorm's ratio to each twin by process memory, by peak allocated bytes and by the bytes autograd saves "
    "for backward (device-independent); the paper's column is its "
    "published BN -> MimicNorm change (CIFAR-100, nvidia-smi, batch 256)."
)


def _process_bytes(row: dict) -> int | None:
    """The process's device memory as NVML/nvidia-smi attribute it, else the device's memory in use
    (the part ran alone on the GPU, so that is this process plus the driver's own)."""
    return row.get("gpu_process_bytes") or row.get("gpu_device_used_bytes")


def render_memory(rows: list[dict]) -> list[str]:
    lines = []
    by_key = {(row["arch"], row["norm"], row["amp"]): row for row in rows}
    archs = list(dict.fromkeys(row["arch"] for row in rows))
    amps = list(dict.fromkeys(row["amp"] for row in rows))
    norms = list(dict.fromkeys(row["norm"] for row in rows))
    others = [norm for norm in norms if norm != "mimic"]
    for amp in amps:
        lines += ["", f"### Training memory, amp {amp}", ""]
        lines += [MEMORY_TABLE_NOTE, ""]
        header = ["model", *[f"{n} process / reserved / allocated MiB" for n in norms]]
        header += [f"{n} step ms" for n in norms]
        header += [f"mimic/{n} {what}" for what in ("process", "allocated", "activations") for n in others] + ["paper"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for arch in archs:
            cells = [arch]
            found = {norm: by_key.get((arch, norm, amp), {}) for norm in norms}
            for norm in norms:
                row = found[norm]
                cells.append(f"{_mib(_process_bytes(row))} / {_mib(row.get('cuda_peak_reserved_bytes'))} / "
                             f"{_mib(row.get('cuda_peak_allocated_bytes'))}")  # fmt: skip
            cells += [f"{found[n]['step_ms_p50']:.1f}" if "step_ms_p50" in found[n] else "n/a" for n in norms]
            mimic = found.get("mimic", {})
            cells += [_ratio(_process_bytes(mimic), _process_bytes(found[n])) for n in others]
            for key in ("cuda_peak_allocated_bytes", "activation_bytes"):
                cells += [_ratio(mimic.get(key), found[n].get(key)) for n in others]
            paper = memory_change_percent(arch)
            cells.append("" if paper is None else f"{paper:+.1f}%")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_inference(report: dict) -> list[str]:
    rows = report["parts"].get("inference", {}).get("rows", [])
    if not rows:
        return []
    lines = ["", "### Inference through the torch backend", "",
             "| model | twin | mode | precision | channels-last | batch | host p50 ms | GPU compute p50 ms | "
             "H2D p50 ms | D2H p50 ms | images/s | peak allocated MiB | process MiB | max abs diff vs fp32 |",
             "|" + "---|" * 14]  # fmt: skip
    for row in rows:
        split = row.get("timing_p50_ms") or {}
        cells = [row["arch"], row["norm"], row["mode"], row["precision"], str(row["channels_last"]),
                 str(row["batch_size"]), f"{row['p50_ms']:.3f}",
                 *(f"{split[k]:.3f}" if k in split else "n/a" for k in ("gpu_compute_ms", "h2d_ms", "d2h_ms")),
                 f"{row['throughput_ips']:.0f}", _mib(row["memory"].get("cuda_peak_allocated_bytes")),
                 _mib(row["memory"].get("gpu_process_bytes")), f"{row['max_abs_diff_vs_fp32']:.2e}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_cuda_runtime(report: dict) -> list[str]:
    rows = report["parts"].get("cuda_runtime", {}).get("rows", [])
    if not rows:
        return []
    lines = ["", "### TensorRT runner's CUDA half (stand-in engine)", "",
             "| CUDA graph | batch | wrong outputs / runs | H2D p50 ms | compute p50 ms | D2H p50 ms "
             "| enqueue p50 ms |",
             "|" + "---|" * 7]  # fmt: skip
    for row in rows:
        split = row["timing_p50_ms"]
        keys = ("h2d_ms", "gpu_compute_ms", "d2h_ms", "enqueue_ms")
        wrong = f"{row['mismatched_iterations']} / {row['iterations']}"
        cells = [str(row["cuda_graph"]), str(row["batch_size"]), wrong,
                 *(f"{split[k]:.3f}" if k in split else "n/a" for k in keys)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: dict) -> str:
    environment = report["parts"].get("environment", {})
    lines = ["# GPU check", "",
             f"- device: {environment.get('device_name', 'n/a')} (driver {environment.get('driver', 'n/a')}), "
             f"torch {environment.get('torch', 'n/a')}, CUDA {environment.get('cuda_runtime', 'n/a')}, "
             f"cuDNN {environment.get('cudnn', 'n/a')}, NCCL {environment.get('nccl', 'n/a')}",
             f"- settings: {report['settings']['device']}, budget {report['budget_s']:.0f} s, "
             f"took {report['elapsed_s']:.0f} s", "", "| part | status | note |", "|---|---|---|"]  # fmt: skip
    statuses = part_statuses(report)
    for name, result in report["parts"].items():
        lines.append(f"| {name} | {statuses[name]} | {result.get('summary') or result.get('reason') or ''} |")
    lines += render_memory(memory_rows(report))
    lines += render_inference(report)
    lines += render_cuda_runtime(report)
    return "\n".join(lines) + "\n"


# --- CLI -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="where gpu_check.json, gpu_check.md and gpu_check.log go")
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at toy sizes (no CUDA path)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time budget of all parts")
    parser.add_argument("--parts", default=",".join(PART_NAMES), help=f"comma-separated subset of {PART_NAMES}")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[str]:
    """The selected part names; UserError for anything unusable, before any work starts."""
    names = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in names if name not in PART_NAMES]
    if unknown or not names:
        raise UserError(f"unknown parts {unknown or args.parts!r}; choose from {', '.join(PART_NAMES)}")
    if args.budget_s <= 0:
        raise UserError(f"--budget-s must be positive, got {args.budget_s}")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; pass a directory for the results")
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{', '.join(missing)} not installed for {sys.executable}; install them or set PYTHON")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names = check_args(args)
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = dry_run_settings() if args.dry_run else gpu_settings()
        report = run_check(out_dir, settings, args.budget_s, names, progress=lambda line: print(line, flush=True))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(out_dir / "gpu_check.json", *GPU_CHECK, report)
    atomic_write_text(out_dir / "gpu_check.md", render_markdown(report))
    statuses = part_statuses(report)
    print(f"results: {out_dir / 'gpu_check.md'} ({', '.join(f'{k} {v}' for k, v in statuses.items())})")
    return 1 if any(status in ("failed", "timed out") for status in statuses.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
