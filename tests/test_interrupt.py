"""Interrupting a stage (Ctrl-C or SIGKILL at a random moment of its run, in a subprocess) never
leaves a corrupted artifact where a good one was, and running the stage again works.

Each stage first runs to completion, so its outputs exist and are good; then it is started again
with the same arguments and killed after a delay drawn (seeded) from the later part of its
measured run time, where it writes. After every kill each output must still be a complete, valid
artifact (the old one or a whole new one), and a final rerun must succeed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines.artifacts import load_image_set
from engines.manifest import EngineManifest

REPO = Path(__file__).resolve().parent.parent
KILLS_PER_STAGE = {"export": 2}  # SIGINT, then SIGKILL (twice where a run is short; export imports torch)
SEED = 20261202
PNG_END = b"IEND\xaeB`\x82"


def _stage_args(ws, out: Path) -> dict[str, tuple[list[str | Path], list[Path]]]:
    """Per stage: its arguments and the outputs to check (directories are engine directories)."""
    stages = {
        "calibrate": (["calibrate", ws.model, "--calib", ws.calib, "--batch-size", "8", "--out", out / "q.onnx",
                       "--trt-cache", out / "q.trt10.calib", "--trt-version", "10.3", "--fp16", out / "q.fp16.onnx"],
                      [out / name for name in ("q.onnx", "q.json", "q.quality.md", "q.quality.png", "q.ranges.json",
                                               "q.trt10.calib", "q.trt10.calib.json", "q.fp16.onnx", "manifest.json")]),
        "build": (["build", ws.model, "--out", out / "engine", "--precision", "fp32"], [out / "engine"]),
        "bench": (["bench", ws.engine, "--out", out / "bench.json", "--eval", ws.eval, "--batch-sizes", "1",
                   "--duration", "0.3"], [out / "bench.json", out / "manifest.json"]),
        "report": (["report", ws.run, "--out", out / "report"],
                   [out / "report" / name for name in ("report.json", "report.md", "report.html")]),
    }  # fmt: skip
    if ws.frozen is not None:
        stages["export"] = (["export", ws.frozen, "--out", out / "e.onnx"], [out / "e.onnx", out / "manifest.json"])
    return stages


def _run(args: list[str | Path]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "mimicnorm_deploy", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def _valid(path: Path) -> None:
    """Raise AssertionError unless `path` is a whole artifact of its kind."""
    assert path.exists(), f"{path} is gone"
    if path.is_dir():
        manifest = EngineManifest.read(path)
        onnx.checker.check_model(onnx.load(str(path / manifest.engine_file)))
        return
    data = path.read_bytes()
    if path.suffix == ".onnx":
        onnx.checker.check_model(onnx.load_from_string(data))
    elif path.suffix == ".json":
        assert isinstance(json.loads(data), dict), path
    elif path.suffix == ".png":
        assert data.startswith(b"\x89PNG") and data.endswith(PNG_END), f"{path}: truncated PNG"
    elif path.suffix == ".html":
        assert data.rstrip().endswith(b"</html>"), f"{path}: truncated HTML"
    elif path.suffix == ".md":
        assert data.endswith(b"\n") and len(data) > 20, f"{path}: truncated Markdown"
    elif path.suffix == ".calib":
        assert data.startswith(b"TRT-") and data.endswith(b"\n"), f"{path}: truncated cache"
    elif path.suffix == ".npz":
        load_image_set(path)
    else:
        raise AssertionError(f"no validity check for {path}")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["calibrate", "build", "bench", "report", "export"])
def test_interrupted_stage_leaves_good_artifacts_and_reruns(workspace, tmp_path, stage):
    stages = _stage_args(workspace, tmp_path)
    if stage not in stages:
        pytest.skip("needs torch")
    args, outputs = stages[stage]
    started = time.perf_counter()
    first = _run(args)
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    duration = time.perf_counter() - started
    for output in outputs:
        _valid(output)

    rng = np.random.default_rng([SEED, sum(map(ord, stage))])
    for kill in range(KILLS_PER_STAGE.get(stage, 3)):
        how = signal.SIGINT if kill == 0 else signal.SIGKILL
        delay = float(rng.uniform(0.4, 1.0)) * duration
        process = _run(args)
        time.sleep(delay)
        process.send_signal(how)
        process.wait(timeout=300)
        for output in outputs:
            _valid(output)  # the old artifact or a whole new one, never a torn one
        if how == signal.SIGINT:
            # Ctrl-C unwinds through the atomic writers: no temporary file is left behind.
            assert not [p for p in tmp_path.rglob(".*") if p.name != ".."], list(tmp_path.rglob(".*"))

    rerun = _run(args)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    for output in outputs:
        _valid(output)
