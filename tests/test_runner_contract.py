"""The runner contract: what every backend's builder and Runner must do. This file is the
definition of a backend; a backend that runs on this machine (or has a fake of its runtime that
does) is one more entry in CASES.

The model is tests/tiny_onnx.py's residual CNN (for the torch backend, which builds from frozen
checkpoints: a frozen ResNet-20 of the same interface): input "images" (batch, 1, 8, 8) float32,
output "logits" (batch, 3) float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fake_tensorrt
import numpy as np
import onnxruntime as ort
import pytest
import tiny_onnx

from engines import build_engine, load_runner
from engines.base import Runner, TensorMeta, run_batched
from engines.errors import UserError
from engines.manifest import PRECISIONS, EngineManifest
from engines.registry import BACKENDS, get_backend
from engines.targets import TARGETS

TIMING_KEYS = {"gpu_compute_ms", "h2d_ms", "d2h_ms", "enqueue_ms"}


def reference_logits(model: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def tiny_frozen_model(path: Path) -> Path:
    """A frozen MimicNorm ResNet-20 (random weights) with the tiny ONNX model's interface."""
    from mimicnorm_deploy.training.checkpoint import CheckpointMeta, save_checkpoint
    from mimicnorm_deploy.training.freeze import freeze_checkpoint

    meta = CheckpointMeta("resnet20", "mimic", 3, 1, 8, [0.5], [0.25], ["a", "b", "c"], "test")
    checkpoint = save_checkpoint(path.with_suffix(".trained.safetensors"), meta.build_model(), meta)
    freeze_checkpoint(checkpoint, path.with_suffix(".safetensors"))
    return path.with_suffix(".safetensors")


def frozen_reference_logits(model: Path, images: np.ndarray) -> np.ndarray:
    import torch

    from mimicnorm_deploy.training.checkpoint import load_checkpoint

    with torch.no_grad():
        return load_checkpoint(model)[0](torch.from_numpy(images)).numpy()


def needs_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("torch")


@dataclass(frozen=True)
class BackendCase:
    backend: str
    # Called first in every test, e.g. to install a fake runtime with monkeypatch.setitem(sys.modules, ...).
    install: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    # False for a fake runtime that does no arithmetic: outputs are then checked for shape and dtype only.
    computes: bool = True
    rtol: float = 1e-5
    atol: float = 1e-6
    # What the backend builds from (written to the given path's neighbourhood) and its expected logits.
    make_model: Callable[[Path], Path] = tiny_onnx.make_tiny_resnet
    reference: Callable[[Path, np.ndarray], np.ndarray] = reference_logits


def _install_fake_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The recording fake (tests/fake_tensorrt.py) runs the parsed ONNX with ONNX Runtime, so it computes.
    fake_tensorrt.install(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the timing cache, never the user's


CASES = [
    pytest.param(BackendCase("onnxruntime"), id="onnxruntime"),
    pytest.param(BackendCase("tensorrt", install=_install_fake_tensorrt), id="tensorrt-fake"),
    pytest.param(BackendCase("torch", needs_torch, make_model=tiny_frozen_model, reference=frozen_reference_logits),
                 id="torch"),  # fmt: skip
]


@dataclass
class Built:
    case: BackendCase
    model: Path
    engine_dir: Path
    manifest: EngineManifest


@pytest.fixture(params=CASES)
def built(request, tmp_path, monkeypatch) -> Built:
    case: BackendCase = request.param
    if case.install is not None:
        case.install(monkeypatch, tmp_path)
    model = case.make_model(tmp_path / "model.onnx")
    manifest = build_engine(model, tmp_path / "engine", backend=case.backend)
    return Built(case, model, tmp_path / "engine", manifest)


def test_backend_is_registered_with_default_options(built):
    module = get_backend(built.case.backend)
    assert built.case.backend in BACKENDS and BACKENDS[built.case.backend].summary
    assert dataclasses.is_dataclass(module.Options)
    module.Options()  # every build option has a default
    assert issubclass(module.Runner, Runner)


def test_lifecycle(built):
    runner = load_runner(built.engine_dir)
    assert isinstance(runner, get_backend(built.case.backend).Runner) and not runner.is_active
    images = tiny_onnx.random_images(2)
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer({"images": images})
    runner.activate()
    assert runner.is_active
    with pytest.raises(RuntimeError, match="already active"):
        runner.activate()
    runner.infer({"images": images})
    runner.deactivate()
    assert not runner.is_active
    with pytest.raises(RuntimeError, match="not active"):
        runner.deactivate()
    with pytest.raises(KeyError), runner:  # the context manager deactivates on errors too
        assert runner.is_active
        raise KeyError("boom")
    assert not runner.is_active
    with runner:  # and a runner can be activated again
        runner.infer({"images": images})


def test_metadata(built):
    with load_runner(built.engine_dir) as runner:
        (image_input,) = runner.inputs
        (logits_output,) = runner.outputs
    assert isinstance(image_input, TensorMeta) and isinstance(logits_output, TensorMeta)
    assert (image_input.name, image_input.dtype, image_input.shape[1:]) == ("images", "float32", (1, 8, 8))
    assert (logits_output.name, logits_output.dtype, logits_output.shape[1:]) == ("logits", "float32", (3,))


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, r"missing \['images'\]"),
        ({"images": np.zeros((2, 1, 8, 8), np.float32), "extra": np.zeros(1, np.float32)}, r"unexpected \['extra'\]"),
        ({"images": np.zeros((2, 1, 8, 8), np.float64)}, "'images' is float64, the engine takes float32"),
        ({"images": [[0.0]]}, "'images' is list"),
        ({"images": np.zeros((2, 8, 8), np.float32)}, r"shape \(2, 8, 8\), the engine takes"),
        ({"images": np.zeros((2, 3, 8, 8), np.float32)}, r"shape \(2, 3, 8, 8\), the engine takes"),
    ],
)
def test_bad_feeds_are_one_line_user_errors(built, feeds, message):
    with load_runner(built.engine_dir) as runner:
        with pytest.raises(UserError, match=message) as error:
            runner.infer(feeds)
        assert "\n" not in str(error.value)
        runner.infer({"images": tiny_onnx.random_images(1)})  # still usable after a refused feed


def test_batched_run_matches_the_onnx_model(built):
    images = tiny_onnx.random_images(11)
    progress = []
    with load_runner(built.engine_dir) as runner:
        logits = run_batched(runner, images, batch_size=4, progress=lambda done, total: progress.append(done))
        single = runner.infer({"images": images[:1]})
    assert progress == [4, 8, 11]
    assert logits.shape == (11, 3) and logits.dtype == np.float32
    assert set(single) == {"logits"} and single["logits"].shape == (1, 3)
    if built.case.computes:
        expected = built.case.reference(built.model, images)
        np.testing.assert_allclose(logits, expected, rtol=built.case.rtol, atol=built.case.atol)
        np.testing.assert_allclose(single["logits"], expected[:1], rtol=built.case.rtol, atol=built.case.atol)


def test_memory_and_timing(built):
    with load_runner(built.engine_dir) as runner:
        runner.infer({"images": tiny_onnx.random_images(2)})
        memory, timing = runner.memory(), runner.timing()
    assert memory and all(isinstance(value, int) and value >= 0 for value in memory.values())
    if timing is not None:
        assert set(timing) <= TIMING_KEYS and all(value >= 0 for value in timing.values())


def test_manifest_round_trip(built):
    manifest = EngineManifest.read(built.engine_dir)
    assert manifest == built.manifest
    assert manifest.backend == built.case.backend
    assert TARGETS[manifest.target].backend == manifest.backend
    assert manifest.precision in PRECISIONS and (manifest.precision == "plan") == (manifest.plan_sha256 is not None)
    assert manifest.device_fingerprint and manifest.backend_version
    assert (built.engine_dir / manifest.engine_file).is_file()
    changed = dataclasses.replace(manifest, build_flags={"x": 1}, created="2000-01-01T00:00:00Z")
    changed.write(built.engine_dir)
    assert EngineManifest.read(built.engine_dir) == changed


def test_a_changed_engine_file_asks_for_rebuild(built):
    engine_file = built.engine_dir / built.manifest.engine_file
    engine_file.write_bytes(engine_file.read_bytes() + b"\0")
    with pytest.raises(UserError, match="changed since build; rebuild"):
        load_runner(built.engine_dir)
