"""Latency and memory of an engine, measured the way trtexec and MLPerf SingleStream do.

Each query starts after the previous one has returned (infer is synchronous), so a latency is
one full inference as the caller sees it, input copy and output included. Memory is the peak
RSS of a fresh process that only loads the engine and runs it, so the figure does not depend
on what the benchmarking process had loaded before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines import load_runner
from engines.base import Runner, TensorMeta
from engines.errors import UserError
from engines.fingerprint import environment_fingerprint, finish_fingerprint
from engines.manifest import EngineManifest

PROGRESS_INTERVAL_S = 0.25
MIN_WARMUP_ITERATIONS = 3
PERCENTILES = (50, 90, 95, 99)
SAMPLE_DECIMALS = 3  # samples are kept in ms rounded to 1 us: finer than any timer jitter, compact in JSON
# The per-inference split a GPU backend measures with CUDA events (Runner.timing), named like trtexec's.
DEVICE_TIMING_KEYS = ("gpu_compute_ms", "h2d_ms", "d2h_ms", "enqueue_ms")
TIMING_SOURCES = ("harness", "trtexec")


@dataclass
class LatencyResult:
    """Latency of one engine at one batch size: summary statistics and the raw samples they come from.

    `samples_ms` are host latencies (submit to outputs ready) in measurement order; `rounds` gives
    how many of them each interleaved round contributed (None for one uninterrupted run). The
    device lists, where present, hold one value per sample.
    """

    batch_size: int
    iterations: int  # timed iterations, warm-up excluded
    warmup_iterations: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    throughput_ips: float  # images per second: batch_size * iterations / sum of timed latencies
    samples_ms: list[float]
    timing_source: str = "harness"  # "harness" (engines.bench) or "trtexec" (imported)
    rounds: list[int] | None = None
    gpu_compute_ms: list[float] | None = None
    h2d_ms: list[float] | None = None
    d2h_ms: list[float] | None = None
    enqueue_ms: list[float] | None = None

    @classmethod
    def from_samples(
        cls,
        batch_size: int,
        samples_ms: list[float] | np.ndarray,
        *,
        warmup_iterations: int = 0,
        timing_source: str = "harness",
        rounds: list[int] | None = None,
        throughput_ips: float | None = None,
        **device_samples_ms: list[float] | np.ndarray | None,
    ) -> LatencyResult:
        """Statistics from raw host latencies (kept, rounded to 1 us). `throughput_ips` defaults to
        batch_size / mean latency; pass the tool's own figure where queries overlapped (trtexec
        with several streams). `device_samples_ms`: any of DEVICE_TIMING_KEYS."""
        unknown = set(device_samples_ms) - set(DEVICE_TIMING_KEYS)
        if unknown:
            raise ValueError(f"unknown timing lists {sorted(unknown)}; known: {', '.join(DEVICE_TIMING_KEYS)}")
        if timing_source not in TIMING_SOURCES:
            raise ValueError(f"timing_source {timing_source!r} is not one of {TIMING_SOURCES}")
        samples = np.round(np.asarray(samples_ms, dtype=np.float64), SAMPLE_DECIMALS)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError("samples_ms must be a non-empty list of latencies")
        if rounds is not None and sum(rounds) != samples.size:
            raise ValueError(f"rounds {rounds} do not add up to the {samples.size} samples")
        p50, p90, p95, p99 = np.percentile(samples, PERCENTILES, method="linear")
        device = {key: _rounded_list(values) for key, values in device_samples_ms.items() if values is not None}
        return cls(
            batch_size=batch_size,
            iterations=int(samples.size),
            warmup_iterations=warmup_iterations,
            mean_ms=float(samples.mean()),
            min_ms=float(samples.min()),
            max_ms=float(samples.max()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p95_ms=float(p95),
            p99_ms=float(p99),
            throughput_ips=throughput_ips if throughput_ips is not None else batch_size * 1000.0 / samples.mean(),
            samples_ms=samples.tolist(),
            timing_source=timing_source,
            rounds=list(rounds) if rounds is not None else None,
            **device,
        )

    @classmethod
    def from_dict(cls, entry: dict, where: str = "bench file") -> LatencyResult:
        """A latency entry of a bench JSON; one-line UserError where it lacks what comparisons need."""
        if not entry.get("samples_ms"):
            raise UserError(
                f"{where}: batch {entry.get('batch_size', '?')} has no raw latency samples; "
                "re-run 'mimicnorm-deploy bench' with this version"
            )
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in entry.items() if key in names})

    def to_dict(self) -> dict:
        # Device lists and rounds are left out where not measured, rather than written as null.
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    def device_timing_keys(self) -> list[str]:
        """The device-side lists this result holds (empty for a CPU engine: host latency only)."""
        return [key for key in DEVICE_TIMING_KEYS if getattr(self, key) is not None]


def _rounded_list(values: list[float] | np.ndarray) -> list[float]:
    return np.round(np.asarray(values, dtype=np.float64), SAMPLE_DECIMALS).tolist()


def random_input(meta: TensorMeta, batch_size: int, seed: int = 0) -> np.ndarray:
    """Values in [0, 1) shaped like input `meta` with its first (batch) dim set to `batch_size`."""
    batch_dim, *other_dims = meta.shape
    if isinstance(batch_dim, int) and batch_dim != batch_size:
        raise UserError(
            f"engine input {meta.name!r} has a fixed batch size of {batch_dim}; benchmark batch {batch_dim} only"
        )
    dynamic = [dim for dim in other_dims if not isinstance(dim, int)]
    if dynamic:
        raise UserError(
            f"engine input {meta.name!r} has dynamic dims {dynamic} besides the batch; "
            "export the model with a fixed input size"
        )
    rng = np.random.default_rng(seed)
    return rng.random((batch_size, *other_dims)).astype(meta.dtype)


@dataclass
class TimedSamples:
    """Latencies of consecutive inferences: host ms, and each device list Runner.timing() gave."""

    host_ms: list[float] = dataclasses.field(default_factory=list)
    device_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def extend(self, other: TimedSamples) -> None:
        self.host_ms.extend(other.host_ms)
        for key, values in other.device_ms.items():
            self.device_ms.setdefault(key, []).extend(values)


def warm_up(runner: Runner, feeds: dict[str, np.ndarray], warmup_s: float) -> int:
    """Run for `warmup_s` (at least MIN_WARMUP_ITERATIONS times); return how many runs that took."""
    iterations = 0
    start = time.perf_counter()
    while iterations < MIN_WARMUP_ITERATIONS or time.perf_counter() - start < warmup_s:
        runner.infer(feeds)
        iterations += 1
    return iterations


def time_inferences(
    runner: Runner,
    feeds: dict[str, np.ndarray],
    *,
    min_iterations: int,
    min_duration_s: float,
    max_iterations: int = 100000,
    progress: Callable[[int, int], None] | None = None,
) -> TimedSamples:
    """Time single synchronous inferences until both `min_iterations` and `min_duration_s` are
    reached (or `max_iterations`). `progress(done, expected)` is called about every 0.25 s."""
    timed = TimedSamples()
    device: dict[str, list[float]] = {}
    # A collection pause inside a timed call would show up as an inference outlier.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        loop_start = last_report = time.perf_counter()
        while len(timed.host_ms) < max_iterations and (
            len(timed.host_ms) < min_iterations or time.perf_counter() - loop_start < min_duration_s
        ):
            start = time.perf_counter()
            runner.infer(feeds)
            end = time.perf_counter()
            timed.host_ms.append((end - start) * 1000.0)
            for key, value in (runner.timing() or {}).items():
                device.setdefault(key, []).append(value)
            if progress is not None and end - last_report >= PROGRESS_INTERVAL_S:
                last_report = end
                progress(len(timed.host_ms), _expected_iterations(timed.host_ms, min_iterations, min_duration_s,
                                                                  max_iterations))  # fmt: skip
    finally:
        if gc_was_enabled:
            gc.enable()
    # A list is kept only if every inference reported it: a partial list cannot be paired with the samples.
    timed.device_ms = {key: values for key, values in device.items() if len(values) == len(timed.host_ms)}
    return timed


def benchmark_feeds(runner: Runner, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    first_input = runner.inputs[0]
    return {first_input.name: random_input(first_input, batch_size, seed)}


def measure_latency(
    runner: Runner,
    batch_size: int,
    *,
    warmup_s: float = 0.5,
    min_iterations: int = 20,
    min_duration_s: float = 2.0,
    max_iterations: int = 100000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> LatencyResult:
    """Warm up for `warmup_s` (at least 3 runs), then time single synchronous inferences until
    both `min_iterations` and `min_duration_s` are reached (or `max_iterations`).

    Percentiles use numpy's "linear" method (interpolation between the two nearest samples).
    """
    feeds = benchmark_feeds(runner, batch_size, seed)
    if progress is not None:
        progress(f"batch {batch_size}: warm-up")
    warmup_iterations = warm_up(runner, feeds, warmup_s)

    def report(done: int, expected: int) -> None:
        if progress is not None:
            progress(f"batch {batch_size}: {done}/{expected} iterations")

    timed = time_inferences(runner, feeds, min_iterations=min_iterations, min_duration_s=min_duration_s,
                            max_iterations=max_iterations, progress=report)  # fmt: skip
    report(len(timed.host_ms), len(timed.host_ms))
    return LatencyResult.from_samples(batch_size, timed.host_ms, warmup_iterations=warmup_iterations,
                                      **timed.device_ms)  # fmt: skip


def _expected_iterations(latencies_ms: list[float], min_iterations: int, min_duration_s: float, cap: int) -> int:
    # For the progress display only: how many runs the duration target will take at the current pace.
    pace_s = sum(latencies_ms) / len(latencies_ms) / 1000.0
    return min(cap, max(min_iterations, len(latencies_ms), math.ceil(min_duration_s / max(pace_s, 1e-9))))


def peak_rss_fresh_process(engine_dir: str | os.PathLike, batch_size: int, iterations: int = 20) -> dict:
    """Peak resident memory of a new Python process that loads the engine and runs `iterations`
    inferences of `batch_size`, and its baseline after importing numpy and onnxruntime only.

    Returns {"peak_rss_bytes": int, "baseline_rss_bytes": int}.
    """
    # The probe imports `engines` by name: put this copy of the package first on its path, so
    # it works from any working directory and without an install.
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "engines.rss_probe",
        os.fspath(engine_dir),
        "--batch",
        str(batch_size),
        "--iterations",
        str(iterations),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or [""])[-1]
        # The probe reports user-facing problems (bad engine, wrong device) as "error: ...".
        if last_line.startswith("error: "):
            raise UserError(last_line.removeprefix("error: "))
        raise RuntimeError(f"memory probe failed (exit {completed.returncode}):\n{completed.stderr[-2000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"peak_rss_bytes": report["peak_rss_bytes"], "baseline_rss_bytes": report["baseline_rss_bytes"]}


# The batch sweep: the latency-throughput curve from single-image queries to large offline batches.
SWEEP_BATCH_SIZES = (1, 8, 32, 64, 128, 256)
ROUND_WARMUP_ITERATIONS = 3  # runs before each timed segment: the previous engine evicted this one's caches


@dataclass
class BenchPlan:
    """How to time a set of engines: `rounds` interleaved rounds (every engine and batch once per
    round, the engine order rotating), each timing `duration_s / rounds` seconds per engine and
    batch, so slow drift of the machine (thermal, other load) hits all engines alike."""

    batch_sizes: tuple[int, ...] = (1, 64)
    rounds: int = 1
    duration_s: float = 2.0  # timed seconds per engine and batch size, over all rounds
    min_iterations: int = 20  # per engine and batch size, over all rounds
    warmup_s: float = 0.5  # once per engine and batch size, before the first round
    sweep: bool = False  # batch sizes an engine refuses (beyond its maximum) are skipped, not an error

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise UserError(f"--rounds {self.rounds}: need at least 1 round")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError(f"batch sizes {list(self.batch_sizes)}: need one or more sizes >= 1")


def mlperf_views(latency: list[LatencyResult]) -> dict:
    """MLPerf's two views of a batch sweep: SingleStream (one image per query, the 90th-percentile
    latency) and Offline (the best images per second over the swept batch sizes; MLPerf issues all
    queries at once, here each batch waits for the previous one, so this is a lower bound)."""
    single = next((r for r in latency if r.batch_size == 1), None)
    best = max(latency, key=lambda r: r.throughput_ips, default=None)
    return {
        "single_stream_p90_ms": single.p90_ms if single is not None else None,
        "offline_throughput_ips": best.throughput_ips if best is not None else None,
        "offline_batch_size": best.batch_size if best is not None else None,
    }


def bench_engines(
    engine_dirs: list[str | os.PathLike],
    plan: BenchPlan,
    *,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Latency of several engines measured in interleaved rounds, then each engine's memory.

    Returns one record per engine (bench JSON payload): {"engine": manifest, "environment":
    fingerprint, "session": what was interleaved, "latency": [LatencyResult.to_dict()],
    "mlperf": mlperf_views, "memory": {...}, "skipped_batch_sizes": {batch: reason}}.
    """
    manifests = [EngineManifest.read(engine_dir) for engine_dir in engine_dirs]
    environment = environment_fingerprint()
    names = [os.fspath(engine_dir) for engine_dir in engine_dirs]
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(load_runner(engine_dir)) for engine_dir in engine_dirs]
        timed, skipped = _interleaved_rounds(runners, names, plan, progress)
        runner_memory = [runner.memory() for runner in runners]
        inputs = [[dataclasses.asdict(meta) for meta in runner.inputs] for runner in runners]
    environment = finish_fingerprint(environment)
    session = {"id": uuid.uuid4().hex, "engines": names, "rounds": plan.rounds, "order": "rotating",
               "duration_s": plan.duration_s}  # fmt: skip
    records = []
    for index, (name, manifest) in enumerate(zip(names, manifests, strict=True)):
        latency = [_result(batch, timed[index][batch]) for batch in plan.batch_sizes if batch in timed[index]]
        record = {
            "engine": dataclasses.asdict(manifest),
            "inputs": inputs[index],  # the shapes tell a comparison whether two engines run the same model
            "environment": environment,
            "session": session,
            "latency": [result.to_dict() for result in latency],
            "mlperf": mlperf_views(latency),
            "skipped_batch_sizes": skipped[index],
        }
        if memory and latency:
            rss_batch = max(result.batch_size for result in latency)
            if progress is not None:
                progress(f"{name}: memory in a fresh process, batch {rss_batch}")
            record["memory"] = {**peak_rss_fresh_process(name, rss_batch), "rss_batch_size": rss_batch,
                                **runner_memory[index]}  # fmt: skip
        records.append(record)
    return records


@dataclass
class _Segments:
    """One engine's timed segments at one batch size, accumulated over rounds."""

    feeds: dict[str, np.ndarray]
    warmup_iterations: int
    samples: TimedSamples = dataclasses.field(default_factory=TimedSamples)
    rounds: list[int] = dataclasses.field(default_factory=list)


def _interleaved_rounds(
    runners: list[Runner], names: list[str], plan: BenchPlan, progress: Callable[[str], None] | None
) -> tuple[list[dict[int, _Segments]], list[dict[str, str]]]:
    segments: list[dict[int, _Segments]] = [{} for _ in runners]
    skipped: list[dict[str, str]] = [{} for _ in runners]
    for index, runner in enumerate(runners):
        for batch in plan.batch_sizes:
            if progress is not None:
                progress(f"{names[index]}: batch {batch}: warm-up")
            try:
                feeds = benchmark_feeds(runner, batch)
                warmup = warm_up(runner, feeds, plan.warmup_s)
            except UserError as exc:
                if not plan.sweep:
                    raise
                skipped[index][str(batch)] = str(exc)
                continue
            segments[index][batch] = _Segments(feeds, warmup)
    per_round_s = plan.duration_s / plan.rounds
    per_round_iterations = math.ceil(plan.min_iterations / plan.rounds)
    total = sum(len(s) for s in segments) * plan.rounds
    done = 0
    for round_index in range(plan.rounds):
        shift = round_index % len(runners)
        for index in list(range(shift, len(runners))) + list(range(shift)):
            for batch, segment in segments[index].items():
                segment.warmup_iterations += warm_up(runner=runners[index], feeds=segment.feeds, warmup_s=0)
                timed = time_inferences(runners[index], segment.feeds, min_iterations=per_round_iterations,
                                        min_duration_s=per_round_s)  # fmt: skip
                segment.samples.extend(timed)
                segment.rounds.append(len(timed.host_ms))
                done += 1
                if progress is not None:
                    progress(f"round {round_index + 1}/{plan.rounds}: {names[index]} batch {batch} "
                             f"({done}/{total} segments)")  # fmt: skip
    return segments, skipped


def _result(batch: int, segment: _Segments) -> LatencyResult:
    rounds = segment.rounds if len(segment.rounds) > 1 else None
    device = {key: values for key, values in segment.samples.device_ms.items()
              if len(values) == len(segment.samples.host_ms)}  # fmt: skip
    return LatencyResult.from_samples(batch, segment.samples.host_ms, warmup_iterations=segment.warmup_iterations,
                                      rounds=rounds, **device)  # fmt: skip


def bench_engine(
    engine_dir: str | os.PathLike,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    warmup_s: float = 0.5,
    min_iterations: int = 20,
    min_duration_s: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """One engine, one uninterrupted timed run per batch size: bench_engines of a single engine."""
    plan = BenchPlan(batch_sizes=batch_sizes, rounds=1, duration_s=min_duration_s, min_iterations=min_iterations,
                     warmup_s=warmup_s)  # fmt: skip
    return bench_engines([engine_dir], plan, progress=progress)[0]
