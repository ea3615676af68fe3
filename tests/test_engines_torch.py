"""The torch backend: engines built from frozen safetensors, run eager / compiled / graph-replayed.

CPU tests run everywhere; CUDA ones are marked `gpu` and skip without a CUDA device.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.errors import UserError  # noqa: E402
from engines.manifest import ENGINE_MANIFEST_NAME  # noqa: E402
from engines.torch import Options, Runner, build_engine  # noqa: E402
from engines.torch.device import parse_nvidia_smi_apps, resolve_device, sum_process_memory  # noqa: E402
from mimicnorm_deploy.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from mimicnorm_deploy.training.freeze import freeze_checkpoint  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A trained-shape MimicNorm ResNet-20 checkpoint and its frozen twin (random weights)."""
    directory = tmp_path_factory.mktemp("models")
    meta = CheckpointMeta("resnet20", "mimic", 10, 1, 16, [0.3], [0.4], [str(i) for i in range(10)], "test")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(directory / "checkpoint.safetensors", meta.build_model(), meta)
    frozen = directory / "frozen.safetensors"
    freeze_checkpoint(checkpoint, frozen)
    return checkpoint, frozen


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)


def _trained_logits(checkpoint, images):
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize(
    ("options", "tolerance"),
    [(Options(), 1e-4), (Options(channels_last=True), 1e-4), (Options(precision="bf16"), 0.1)],
    ids=["fp32", "fp32-channels-last", "bf16"],
)
def test_engine_runs_the_frozen_twin(models, images, tmp_path, options, tolerance):
    checkpoint, frozen = models
    manifest = build_engine(frozen, tmp_path / "engine", options)
    assert (manifest.backend, manifest.target, manifest.precision) == ("torch", "torch-cpu", options.precision)
    with Runner(tmp_path / "engine") as runner:
        assert [meta.name for meta in runner.inputs] == ["images"]
        assert runner.inputs[0].shape == ("batch", 1, 16, 16) and runner.inputs[0].dtype == "float32"
        logits = runner.infer({"images": images})["logits"]
        assert runner.timing() is None  # CPU: no device split
        assert runner.memory()["model_file_bytes"] == frozen.stat().st_size
    assert logits.dtype == np.float32 and logits.shape == (3, 10)
    expected = _trained_logits(checkpoint, images)
    assert np.abs(logits - expected).max() <= tolerance * max(1.0, np.abs(expected).max())


def test_compile_mode_runs_through_torch_compile(models, images, tmp_path, monkeypatch):
    # A real torch.compile of a ResNet takes minutes on a CPU (scripts/bench_torch_vs_ort.py does
    # it); here a fake compiler records how the runner asks for it and runs the function as is.
    calls = []

    def fake_compile(function, **kwargs):
        calls.append(kwargs)
        return function

    monkeypatch.setattr(torch, "compile", fake_compile)
    checkpoint, frozen = models
    build_engine(frozen, tmp_path / "engine", Options(mode="compile"))
    with Runner(tmp_path / "engine") as runner:
        logits = runner.infer({"images": images})["logits"]
    assert calls == [{"dynamic": False}]
    assert np.abs(logits - _trained_logits(checkpoint, images)).max() < 1e-4


def test_build_refuses_a_trained_checkpoint(models, tmp_path):
    checkpoint, _ = models
    with pytest.raises(UserError, match="not a frozen one; run 'mimicnorm-deploy freeze'"):
        build_engine(checkpoint, tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


def test_build_replaces_an_engine_but_never_another_directory(models, tmp_path):
    _, frozen = models
    build_engine(frozen, tmp_path / "engine", Options(precision="bf16"))
    assert build_engine(frozen, tmp_path / "engine").precision == "fp32"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an engine directory"):
        build_engine(frozen, tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine", "run"]  # no staging left behind


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (Options(mode="jit"), "torch mode 'jit' is not one of eager, compile, cuda-graph"),
        (Options(precision="int8"), "torch precision 'int8' is not one of fp32, fp16, bf16"),
        (Options(mode="cuda-graph"), "mode cuda-graph needs a CUDA device"),
        (Options(device="tpu"), "unknown device 'tpu'"),
    ],
)
def test_bad_options_are_one_line_errors(models, tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        build_engine(models[1], tmp_path / "engine", options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_asked_without_cuda_is_refused():
    with pytest.raises(UserError, match="PyTorch sees no CUDA device here; use --device cpu"):
        resolve_device("cuda")


def _edit_manifest(engine_dir, **changes):
    path = engine_dir / ENGINE_MANIFEST_NAME
    document = json.loads(path.read_text())
    for key, value in changes.items():
        document[key] = value(document[key]) if callable(value) else value
    path.write_text(json.dumps(document))


def test_runner_refuses_an_engine_for_another_device(models, tmp_path):
    engine_dir = tmp_path / "engine"
    build_engine(models[1], engine_dir)
    _edit_manifest(engine_dir, device_fingerprint="riscv64 CPU without INT8 dot product")
    with pytest.raises(UserError, match=r"engine built for riscv64 CPU .*rebuild the engine on this device"):
        Runner(engine_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_runner_refuses_a_cuda_engine_without_cuda(models, tmp_path):
    engine_dir = tmp_path / "engine"
    build_engine(models[1], engine_dir)
    _edit_manifest(engine_dir, device_fingerprint="NVIDIA H100 (compute capability 9.0)",
                   backend_options=lambda options: {**options, "device": "cuda"})  # fmt: skip
    with pytest.raises(UserError, match=r"built for NVIDIA H100 \(compute capability 9.0\) \(cuda\), which this"):
        Runner(engine_dir)


def test_nvidia_smi_process_rows_are_summed_per_process():
    text = "1234, 500\n999, 20\n1234, 12\n"  # one process on two GPUs, another on one
    rows = parse_nvidia_smi_apps(text)
    assert rows == [(1234, 500 * 2**20), (999, 20 * 2**20), (1234, 12 * 2**20)]
    assert sum_process_memory(rows, 1234) == 512 * 2**20
    assert sum_process_memory(rows, 42) is None
    # Where the driver cannot attribute memory (MIG, WSL) it prints [N/A]: not measured, not zero.
    assert sum_process_memory(parse_nvidia_smi_apps("1234, [N/A]\n"), 1234) is None


# --- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(
    "options",
    [Options(device="cuda"), Options(device="cuda", precision="fp16", channels_last=True),
     Options(device="cuda", mode="cuda-graph"), Options(device="cuda", mode="cuda-graph", precision="fp16")],
    ids=["fp32", "fp16-nhwc", "graph-fp32", "graph-fp16"],
)  # fmt: skip
def test_cuda_engine_matches_and_times_itself(models, images, tmp_path, options):
    checkpoint, frozen = models
    build_engine(frozen, tmp_path / "engine", options)
    expected = _trained_logits(checkpoint, images)
    with Runner(tmp_path / "engine") as runner:
        for batch in (images, images[:1], images):  # a graph per shape, then the first one replayed
            logits = runner.infer({"images": batch})["logits"]
            assert np.abs(logits - expected[: len(batch)]).max() <= (1e-3 if options.precision == "fp32" else 0.05)
            timing = runner.timing()
            assert set(timing) == {"h2d_ms", "gpu_compute_ms", "d2h_ms"} and all(v >= 0 for v in timing.values())
        memory = runner.memory()
    assert memory["cuda_peak_allocated_bytes"] > 0
    assert memory["cuda_peak_reserved_bytes"] >= memory["cuda_peak_allocated_bytes"]


def test_cli_builds_a_torch_engine(models, tmp_path, capsys):
    from mimicnorm_deploy.cli import main

    out = tmp_path / "engine"
    assert main(["build", str(models[1]), "--backend", "torch", "--out", str(out), "--precision", "bf16",
                 "--channels-last"]) == 0  # fmt: skip
    options = json.loads((out / ENGINE_MANIFEST_NAME).read_text())["backend_options"]
    assert options == {"device": "cpu", "mode": "eager", "precision": "bf16", "channels_last": True}
    assert "torch" in capsys.readouterr().out
    assert main(["build", str(models[1]), "--backend", "torch", "--out", str(out), "--mode", "cuda-graph"]) == 2
    assert "mode cuda-graph needs a CUDA device" in capsys.readouterr().err
