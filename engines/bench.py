"""Latency and memory of an engine, measured the way trtexec and MLPerf SingleStream do.

Each query starts after the previous one has returned (infer is synchronous), so a latency is
one full inference as the caller sees it, input copy and output included. Memory is the peak
RSS of a fresh process that only loads the engine and runs it, so the figure does not depend
on what the benchmarking process had loaded before.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines import load_runner
from engines.base import Runner, TensorMeta
from engines.errors import UserError
from engines.manifest import EngineManifest

PROGRESS_INTERVAL_S = 0.25
MIN_WARMUP_ITERATIONS = 3
PERCENTILES = (50, 90, 95, 99)


@dataclass
class LatencyResult:
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    first_input = runner.inputs[0]
    feeds = {first_input.name: random_input(first_input, batch_size, seed)}

    if progress is not None:
        progress(f"batch {batch_size}: warm-up")
    warmup_iterations = 0
    warmup_start = time.perf_counter()
    while warmup_iterations < MIN_WARMUP_ITERATIONS or time.perf_counter() - warmup_start < warmup_s:
        runner.infer(feeds)
        warmup_iterations += 1

    latencies_s: list[float] = []
    # A collection pause inside a timed call would show up as an inference outlier.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        loop_start = last_report = time.perf_counter()
        while len(latencies_s) < max_iterations and (
            len(latencies_s) < min_iterations or time.perf_counter() - loop_start < min_duration_s
        ):
            start = time.perf_counter()
            runner.infer(feeds)
            end = time.perf_counter()
            latencies_s.append(end - start)
            if progress is not None and end - last_report >= PROGRESS_INTERVAL_S:
                last_report = end
                expected = _expected_iterations(latencies_s, min_iterations, min_duration_s, max_iterations)
                progress(f"batch {batch_size}: {len(latencies_s)}/{expected} iterations")
    finally:
        if gc_was_enabled:
            gc.enable()
    if progress is not None:
        progress(f"batch {batch_size}: {len(latencies_s)}/{len(latencies_s)} iterations")

    latencies_ms = np.asarray(latencies_s) * 1000.0
    p50, p90, p95, p99 = np.percentile(latencies_ms, PERCENTILES, method="linear")
    return LatencyResult(
        batch_size=batch_size,
        iterations=len(latencies_s),
        warmup_iterations=warmup_iterations,
        mean_ms=float(latencies_ms.mean()),
        min_ms=float(latencies_ms.min()),
        max_ms=float(latencies_ms.max()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        throughput_ips=batch_size * len(latencies_s) / float(np.sum(latencies_s)),
    )


def _expected_iterations(latencies_s: list[float], min_iterations: int, min_duration_s: float, cap: int) -> int:
    # For the progress display only: how many runs the duration target will take at the current pace.
    pace = sum(latencies_s) / len(latencies_s)
    return min(cap, max(min_iterations, len(latencies_s), math.ceil(min_duration_s / max(pace, 1e-9))))


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


def bench_engine(
    engine_dir: str | os.PathLike,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    warmup_s: float = 0.5,
    min_iterations: int = 20,
    min_duration_s: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Latency at each batch size, then memory at the largest, for the engine in `engine_dir`.

    Returns {"engine": manifest fields, "latency": [LatencyResult.to_dict(), ...],
    "memory": {"peak_rss_bytes", "baseline_rss_bytes", "rss_batch_size", **runner.memory()}}.
    """
    manifest = EngineManifest.read(engine_dir)
    latency = []
    with load_runner(engine_dir) as runner:
        for batch_size in batch_sizes:
            result = measure_latency(
                runner,
                batch_size,
                warmup_s=warmup_s,
                min_iterations=min_iterations,
                min_duration_s=min_duration_s,
                progress=progress,
            )
            latency.append(result.to_dict())
        runner_memory = runner.memory()
    rss_batch_size = max(batch_sizes)
    if progress is not None:
        progress(f"memory: fresh process, batch {rss_batch_size}")
    memory = {**peak_rss_fresh_process(engine_dir, rss_batch_size), "rss_batch_size": rss_batch_size, **runner_memory}
    return {"engine": dataclasses.asdict(manifest), "latency": latency, "memory": memory}
