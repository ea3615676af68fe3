"""The TensorRT backend's orchestration, run against the recording FAKE of TensorRT and cuda-python
(tests/fake_tensorrt.py: it proves our calls, not TensorRT). Every build path per TensorRT version,
its refusals, DLA fallback, batch profiles, timing cache, portability, and the runner's buffers,
timing split and CUDA-graph replay. tests/test_tensorrt_real.py runs the real thing where it exists.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
from fake_tensorrt import COMPUTE_MS, FakeGpu, install
from tiny_onnx import make_tiny_resnet, random_images

from calibration.fp16 import convert_qdq_fp16
from calibration.quantize import write_qdq_model
from calibration.ranges import calibrate_ranges
from engines.artifacts import sha256_file
from engines.errors import UserError
from engines.manifest import EngineManifest
from engines.precision_plan import Gate, PrecisionPlan
from engines.tensorrt import Options, Runner, build_engine
from engines.tensorrt.api import INSTALL_HINT
from engines.tensorrt.builder import DLA_LAYERS_FILE, ENGINE_FILE, LAYERS_FILE
from engines.trt_cache import write_model_calibration_cache

TRT10, TRT11, JETPACK6 = "10.13.0.35", "11.1.0.5", "10.3.0.30"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """What calibrate writes for the tensorrt target: FP32 model, ranges, cache (TensorRT 10.13), Q/DQ models."""
    root = tmp_path_factory.mktemp("calibrated")
    model = make_tiny_resnet(root / "model.onnx")
    ranges = calibrate_ranges(model, random_images(16), "minmax", batch_size=8)
    cache = write_model_calibration_cache(root / "model.calib", ranges, trt_version=101300)
    qdq = write_qdq_model(model, ranges, root / "model.int8.onnx", placement="tensorrt").output_path
    qdq_fp16 = convert_qdq_fp16(qdq, root / "model.int8-fp16.onnx", activation_max_abs=ranges.max_abs)
    plan = PrecisionPlan(
        model_sha256=sha256_file(model), calibration_sha256=ranges.calibration_sha256, holdout_sha256="0" * 64,
        method="minmax", per_channel=False, reduce_range=False, activations="int8-symmetric", placement="tensorrt",
        high_precision="fp16", gate=Gate(min_logits_sqnr_db=20.0),
        layers={"conv1": "int8", "conv2": "fp16", "residual_add": "int8", "fc": "fp16"}, sensitivity=[],
    )  # fmt: skip
    return {"root": root, "model": model, "cache": cache, "qdq": qdq, "qdq_fp16": qdq_fp16,
            "plan": plan.save(root / "model.plan.json"), "ranges": ranges}  # fmt: skip


def _build(tmp_path, monkeypatch, model, version=TRT10, gpu=None, fake_options=None, **options):
    trt, cudart = install(monkeypatch, version, gpu, **(fake_options or {}))
    options.setdefault("timing_cache_dir", str(tmp_path / "timing"))
    manifest = build_engine(model, tmp_path / "engine", Options(**options))
    return manifest, trt, cudart


def _calls(trt, name):
    return [args for call, args in trt.calls if call == name]


def test_without_tensorrt_build_says_how_to_get_it(tmp_path, monkeypatch, artifacts):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    with pytest.raises(UserError, match="python3-libnvinfer") as error:
        build_engine(artifacts["model"], tmp_path / "engine", Options())
    assert str(error.value) == INSTALL_HINT and "\n" not in INSTALL_HINT
    assert not (tmp_path / "engine").exists()


def test_tensorrt_10_as_typed_builds_a_strongly_typed_network(tmp_path, monkeypatch, artifacts):
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["qdq"])
    assert _calls(trt, "Builder.create_network") == [(1 << 1,)]  # STRONGLY_TYPED
    assert _calls(trt, "Builder.build_serialized_network") == [([],)]  # no precision flags
    assert manifest.backend == "tensorrt" and manifest.backend_version == TRT10
    assert manifest.build_flags["path"] == "strongly-typed" and manifest.target == "desktop-gpu"
    assert manifest.device["name"] == FakeGpu().name and manifest.device["compute_capability"] == "9.0"
    assert sorted(p.name for p in (tmp_path / "engine").iterdir()) == ["engine.json", LAYERS_FILE, ENGINE_FILE]
    assert manifest.model_sha256 == sha256_file(artifacts["qdq"]) and manifest.precision == "int8"
    assert manifest.engine_sha256 == sha256_file(tmp_path / "engine" / ENGINE_FILE) and manifest.plan_sha256 is None


def test_tensorrt_11_networks_are_strongly_typed_without_the_deprecated_flag(tmp_path, monkeypatch, artifacts):
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["qdq_fp16"], version=TRT11)
    assert _calls(trt, "Builder.create_network") == [(0,)]
    assert manifest.build_flags["strongly_typed"] is True and manifest.build_flags["flags"] == []


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_a_mixed_qdq_model_builds_as_typed_with_its_plan_recorded(tmp_path, monkeypatch, artifacts, version):
    # calibrate's Q/DQ and FP16 conversions keep the node names a plan uses.
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["qdq_fp16"], version=version,
                              plan=str(artifacts["plan"]))  # fmt: skip
    assert manifest.precision == "plan" and manifest.plan_sha256 == sha256_file(artifacts["plan"])
    assert _calls(trt, "ILayer.precision") == [] and manifest.build_flags["flags"] == []  # types come from the file


@pytest.mark.parametrize(("precision", "flags"), [("fp16", ["FP16"]), ("fp32", [])])
def test_tensorrt_10_plain_precisions_are_weakly_typed(tmp_path, monkeypatch, artifacts, precision, flags):
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["model"], precision=precision)
    assert _calls(trt, "Builder.create_network") == [(0,)]
    assert _calls(trt, "Builder.build_serialized_network") == [(flags,)]
    assert manifest.precision == precision and manifest.build_flags["path"] == "weakly-typed"


def test_tensorrt_10_cache_path_reads_the_cache_and_pins_the_plan(tmp_path, monkeypatch, artifacts):
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["model"], calibration_cache=str(artifacts["cache"]),
                              plan=str(artifacts["plan"]))  # fmt: skip
    assert _calls(trt, "Builder.build_serialized_network") == [(["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"],)]
    assert ("IBuilderConfig.int8_calibrator",) == tuple(
        call for call, _ in trt.calls if call == "IBuilderConfig.int8_calibrator")  # fmt: skip
    pinned = {args[0] for args in _calls(trt, "ILayer.precision")}
    assert pinned == {"conv2", "fc"}  # the plan's FP16 layers; INT8 ones stay free
    assert ("conv2", 0, "HALF") in _calls(trt, "ILayer.set_output_type")
    assert manifest.precision == "plan" and manifest.plan_sha256 == sha256_file(artifacts["plan"])
    assert manifest.build_flags["calibration_cache_sha256"] == sha256_file(artifacts["cache"])


def test_a_cache_tensorrt_would_not_accept_stops_the_build(tmp_path, monkeypatch, artifacts):
    # Written for JetPack 6 (10.3): the header names 100300, this TensorRT is 10.13.
    cache = write_model_calibration_cache(tmp_path / "jp6.calib", artifacts["ranges"], trt_version=100300)
    with pytest.raises(UserError, match="re-run calibrate for this TensorRT version"):
        _build(tmp_path, monkeypatch, artifacts["model"], calibration_cache=str(cache))
    assert not (tmp_path / "engine").exists()


def test_the_calibrator_matches_the_cache_header(tmp_path, monkeypatch, artifacts):
    cache = write_model_calibration_cache(tmp_path / "mm.calib", artifacts["ranges"], trt_version=101300,
                                          algorithm="MinMaxCalibration")  # fmt: skip
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["model"], calibration_cache=str(cache))
    (calibrator,) = [args[0] for call, args in trt.calls if call == "IBuilderConfig.int8_calibrator"]
    assert isinstance(calibrator, trt.IInt8MinMaxCalibrator) and manifest.build_flags["path"] == "calibration-cache"


def test_a_cache_tensorrt_ignores_fails_in_one_line_instead_of_calibrating_on_nothing(tmp_path, monkeypatch,
                                                                                     artifacts):  # fmt: skip
    # Skip our own header check: TensorRT itself then ignores the 10.3 cache and asks for images.
    monkeypatch.setattr("engines.tensorrt.builder._check_cache_version", lambda inputs, version: None)
    cache = write_model_calibration_cache(tmp_path / "jp6.calib", artifacts["ranges"], trt_version=100300)
    with pytest.raises(UserError, match="did not accept the calibration cache and asked for images"):
        _build(tmp_path, monkeypatch, artifacts["model"], calibration_cache=str(cache))
    assert not (tmp_path / "engine").exists()


def test_cache_and_plan_for_another_model_are_refused(tmp_path, monkeypatch, artifacts):
    other = make_tiny_resnet(tmp_path / "retrained.onnx", seed=7)
    with pytest.raises(UserError, match="stale calibration cache"):
        _build(tmp_path, monkeypatch, other, calibration_cache=str(artifacts["cache"]))
    plan = PrecisionPlan.load(artifacts["plan"])
    plan.layers = {"conv_elsewhere": "fp16"}
    with pytest.raises(UserError, match="made for another model"):
        _build(tmp_path, monkeypatch, artifacts["qdq"], plan=str(plan.save(tmp_path / "other.plan.json")))
    plan = PrecisionPlan.load(artifacts["plan"])
    plan.model_sha256 = "f" * 64
    with pytest.raises(UserError, match="plan made for another model"):
        _build(tmp_path, monkeypatch, artifacts["model"], calibration_cache=str(artifacts["cache"]),
               plan=str(plan.save(tmp_path / "stale.plan.json")))  # fmt: skip


def test_tensorrt_11_refuses_a_cache_naming_the_qdq_model(tmp_path, monkeypatch, artifacts):
    record = {"schema": "mimicnorm-deploy/calibration", "schema_version": 1, "trt_cache": str(artifacts["cache"]),
              "output": str(artifacts["qdq"])}  # fmt: skip
    (artifacts["root"] / "model.int8.json").write_text(json.dumps(record))
    with pytest.raises(UserError) as error:
        _build(tmp_path, monkeypatch, artifacts["model"], version=TRT11, calibration_cache=str(artifacts["cache"]))
    assert "TensorRT 11 has no calibration caches" in str(error.value) and str(artifacts["qdq"]) in str(error.value)
    with pytest.raises(UserError, match="strongly typed networks only"):
        _build(tmp_path, monkeypatch, artifacts["model"], version=TRT11, precision="fp16")


def test_qdq_files_on_weakly_typed_tensorrt_10(tmp_path, monkeypatch, artifacts):
    with pytest.raises(UserError, match="FP16 Q/DQ.*--precision as-typed"):
        _build(tmp_path, monkeypatch, artifacts["qdq_fp16"], precision="fp16")
    with pytest.raises(UserError, match="stale calibration cache"):  # the cache belongs to the FP32 model
        _build(tmp_path, monkeypatch, artifacts["qdq"], calibration_cache=str(artifacts["cache"]))
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["qdq"], precision="fp16")  # INT8 Q/DQ: explicit
    assert _calls(trt, "Builder.build_serialized_network") == [(["FP16", "INT8"],)]


def test_dla_target_falls_back_to_gpu_and_reports_each_layer(tmp_path, monkeypatch, artifacts):
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["model"], gpu=FakeGpu(num_dla_cores=2),
                              target="jetson-orin-agx-dla1", precision="fp16")  # fmt: skip
    assert ("IBuilderConfig.default_device_type", ("DLA",)) in trt.calls
    assert ("IBuilderConfig.DLA_core", (1,)) in trt.calls
    assert "GPU_FALLBACK" in _calls(trt, "Builder.build_serialized_network")[0][0]
    report = json.loads((tmp_path / "engine" / DLA_LAYERS_FILE).read_text())["layers"]
    assert {entry["layer"] for entry in report if entry["device"] == "GPU"} == {"fc"}  # the fake's DLA has no Gemm
    assert ("IBuilderConfig.set_memory_pool_limit", ("WORKSPACE", 2048 << 20)) in trt.calls  # AGX Orin's cap
    with pytest.raises(UserError, match="has 0 DLA cores"):
        _build(tmp_path, monkeypatch, artifacts["model"], target="jetson-orin-nx-dla0", precision="fp16")
    with pytest.raises(UserError, match="DLA runs FP16 and INT8 only"):
        _build(tmp_path, monkeypatch, artifacts["model"], gpu=FakeGpu(num_dla_cores=2),
               target="jetson-orin-agx-dla0", precision="fp32")  # fmt: skip


def test_batch_profile_and_target_limits(tmp_path, monkeypatch, artifacts):
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["model"], target="jetson-orin-nano",
                              min_batch=2, opt_batch=4, max_batch=8, builder_optimization_level=5)  # fmt: skip
    assert _calls(trt, "IOptimizationProfile.set_shape") == [("images", (2, 1, 8, 8), (4, 1, 8, 8), (8, 1, 8, 8))]
    assert ("IBuilderConfig.set_memory_pool_limit", ("WORKSPACE", 512 << 20)) in trt.calls
    assert ("IBuilderConfig.builder_optimization_level", (5,)) in trt.calls
    assert ("IBuilderConfig.profiling_verbosity", ("DETAILED",)) in trt.calls
    images = next(entry for entry in manifest.build_flags["io"] if entry["input"])
    assert images["profile"] == [[2, 1, 8, 8], [4, 1, 8, 8], [8, 1, 8, 8]]
    assert json.loads((tmp_path / "engine" / LAYERS_FILE).read_text())["Layers"][0]["Name"] == "input_scale"
    with pytest.raises(UserError, match="1 <= min <= opt <= max"):
        Options(min_batch=4, max_batch=2) and _build(tmp_path, monkeypatch, artifacts["model"], min_batch=4,
                                                     max_batch=2)  # fmt: skip


def test_timing_cache_is_reused_per_device_and_version(tmp_path, monkeypatch, artifacts):
    manifest, trt, _ = _build(tmp_path, monkeypatch, artifacts["model"])
    cache_file = tmp_path / "timing" / "nvidia-h100-80gb-hbm3-sm9.0-trt10.13.0.35.timing-cache"
    assert manifest.build_flags["timing_cache"] == str(cache_file) and cache_file.is_file()
    assert _calls(trt, "IBuilderConfig.create_timing_cache") == [(0,)]
    _, trt, _ = _build(tmp_path, monkeypatch, artifacts["model"])
    assert _calls(trt, "IBuilderConfig.create_timing_cache") == [(cache_file.stat().st_size,)]
    _, trt, _ = _build(tmp_path, monkeypatch, artifacts["model"], version="10.14.1.48")
    assert _calls(trt, "IBuilderConfig.create_timing_cache") == [(0,)]  # another version: its own cache


def test_parser_and_builder_failures_are_one_line_and_leave_no_engine(tmp_path, monkeypatch, artifacts):
    _build(tmp_path, monkeypatch, artifacts["model"])
    before = sha256_file(tmp_path / "engine" / ENGINE_FILE)
    with pytest.raises(UserError) as error:
        _build(tmp_path, monkeypatch, artifacts["model"], fake_options={"unsupported_ops": ("Gemm",)})
    assert "ONNX parser failed at node 'fc' (Gemm): No importer registered for op: Gemm" in str(error.value)
    with pytest.raises(UserError) as error:
        _build(tmp_path, monkeypatch, artifacts["model"], fake_options={"build_error": "out of memory\n  in tactic"})
    assert str(error.value).endswith("could not build it: out of memory in tactic")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="ONNX parser failed: Failed to parse ONNX model") as error:
        _build(tmp_path, monkeypatch, tmp_path / "bad.onnx")
    assert "\n" not in str(error.value)
    assert sha256_file(tmp_path / "engine" / ENGINE_FILE) == before  # the old engine is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "engine", "timing"]  # no staging left


def _runner(tmp_path, monkeypatch, artifacts, version=TRT10, gpu=None, **options):
    _build(tmp_path, monkeypatch, artifacts["model"], version=version, gpu=gpu, **options)
    return Runner(tmp_path / "engine")


def _reference(model, images):
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def test_runner_runs_on_the_stream_with_buffers_once_per_shape(tmp_path, monkeypatch, artifacts):
    runner = _runner(tmp_path, monkeypatch, artifacts)
    trt, cudart = sys.modules["tensorrt"], sys.modules["cuda.bindings.runtime"]
    images = random_images(4)
    with runner:
        np.testing.assert_allclose(runner.infer({"images": images})["logits"], _reference(artifacts["model"], images),
                                   rtol=1e-6)  # fmt: skip
        allocated = len(trt.gpu.memory)
        runner.infer({"images": images})
        assert len(trt.gpu.memory) == allocated  # same shape: same buffers
        small = random_images(2, seed=3)
        np.testing.assert_allclose(runner.infer({"images": small})["logits"], _reference(artifacts["model"], small),
                                   rtol=1e-6)  # fmt: skip
        assert len(trt.gpu.memory) == 2 * allocated  # a new shape: its own buffers, once
        runner.infer({"images": images})
        assert len(trt.gpu.memory) == 2 * allocated
        timing = runner.timing()
        assert timing["gpu_compute_ms"] == pytest.approx(COMPUTE_MS)
        assert timing["h2d_ms"] == pytest.approx(images.nbytes / 1024 * 1e-3)
        assert set(timing) == {"h2d_ms", "gpu_compute_ms", "d2h_ms", "enqueue_ms"}
        memory = runner.memory()
        assert memory["device_memory_bytes"] > 0 and memory["engine_bytes"] > 0
    assert trt.gpu.memory == {} and trt.gpu.pinned == {} and cudart.streams == set()  # all released
    shapes = [args for args in _calls(trt, "IExecutionContext.set_input_shape")]
    assert shapes == [("images", (4, 1, 8, 8)), ("images", (2, 1, 8, 8)), ("images", (4, 1, 8, 8))]


def test_cuda_graph_replay_captures_once_per_shape(tmp_path, monkeypatch, artifacts):
    runner = _runner(tmp_path, monkeypatch, artifacts, cuda_graph=True)
    trt = sys.modules["tensorrt"]
    with runner:
        for seed in (1, 2, 3):
            images = random_images(4, seed=seed)
            np.testing.assert_allclose(runner.infer({"images": images})["logits"],
                                       _reference(artifacts["model"], images), rtol=1e-6)  # fmt: skip
    assert len(_calls(trt, "IExecutionContext.execute_async_v3")) == 2  # one plain run, one captured; then replays


def test_engine_from_another_gpu_or_tensorrt_is_refused(tmp_path, monkeypatch, artifacts):
    runner = _runner(tmp_path, monkeypatch, artifacts)
    install(monkeypatch, TRT10, FakeGpu(name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0)))
    with pytest.raises(UserError, match="built for NVIDIA H100 80GB HBM3 .* this device is NVIDIA A100.*rebuild on "
                                        "this device"):  # fmt: skip
        runner.activate()
    install(monkeypatch, "10.14.1.48")
    with pytest.raises(UserError, match="TensorRT 10.13.0.35, this device is .* TensorRT 10.14.1.48"):
        runner.activate()
    assert not runner.is_active


def test_version_and_hardware_compatible_engines_load_where_tensorrt_allows(tmp_path, monkeypatch, artifacts):
    _build(tmp_path, monkeypatch, artifacts["model"], version_compatible=True, hardware_compatibility="ampere-plus")
    trt, _ = install(monkeypatch, "10.14.1.48", FakeGpu(name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0)))
    with Runner(tmp_path / "engine") as runner:
        assert runner.is_active
    install(monkeypatch, "11.1.0.5")
    with pytest.raises(UserError, match="rebuild on this device"):
        Runner(tmp_path / "engine").activate()


def test_manifest_says_what_was_built(tmp_path, monkeypatch, artifacts):
    manifest, _, _ = _build(tmp_path, monkeypatch, artifacts["model"], target="desktop-gpu", precision="fp16")
    assert EngineManifest.read(tmp_path / "engine") == manifest
    for key in ("path", "flags", "target", "batch_profile", "io", "version_compatible", "calibration_cache_sha256"):
        assert key in manifest.build_flags
    assert set(manifest.device) >= {"name", "compute_capability", "tensorrt_version", "l4t_release"}


def test_cli_build_with_tensorrt_options(tmp_path, monkeypatch, artifacts, capsys):
    from mimicnorm_deploy.cli import main

    trt, _ = install(monkeypatch, TRT10, FakeGpu(num_dla_cores=2))
    out = tmp_path / "engine"
    assert main(["build", str(artifacts["model"]), "--out", str(out), "--backend", "tensorrt", "--precision", "fp16",
                 "--target", "jetson-orin-nx-dla0", "--min-batch", "1", "--max-batch", "16", "--cuda-graph",
                 "--timing-cache-dir", str(tmp_path / "timing")]) == 0  # fmt: skip
    manifest = EngineManifest.read(out)
    assert manifest.target == "jetson-orin-nx-dla0" and manifest.precision == "fp16"
    assert manifest.backend_options["cuda_graph"] is True and manifest.build_flags["batch_profile"]["max"] == [16]
    assert "tensorrt" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, monkeypatch, artifacts, capsys):
    from mimicnorm_deploy.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    build = ["build", str(artifacts["model"]), "--out", str(tmp_path / "engine")]
    assert main([*build, "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {INSTALL_HINT}"
    assert main([*build, "--target", "desktop-gpu"]) == 2  # onnxruntime has no target option
    assert "backend 'onnxruntime' has no option target" in capsys.readouterr().err
    assert not (tmp_path / "engine").exists()


def test_runner_over_pycuda(tmp_path, monkeypatch, artifacts):
    from fake_tensorrt import make_fake_pycuda

    gpu = FakeGpu()
    _build(tmp_path, monkeypatch, artifacts["model"], gpu=gpu)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)  # no cuda-python: pycuda is used
    pycuda = make_fake_pycuda(gpu)
    monkeypatch.setitem(sys.modules, "pycuda", type(sys)("pycuda"))
    monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda)
    images = random_images(3)
    with Runner(tmp_path / "engine") as runner:
        np.testing.assert_allclose(runner.infer({"images": images})["logits"], _reference(artifacts["model"], images),
                                   rtol=1e-6)  # fmt: skip
        assert runner.timing()["gpu_compute_ms"] == pytest.approx(COMPUTE_MS)
        assert runner.manifest.device["cuda_binding"] == "cuda-python"  # built with it; runs with either
    assert gpu.memory == {} and gpu.pinned == {}
    with pytest.raises(UserError, match="CUDA-graph replay needs cuda-python"):
        _build(tmp_path, monkeypatch, artifacts["model"], gpu=gpu, cuda_graph=True)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
        with Runner(tmp_path / "engine") as runner:
            runner.infer({"images": images})
