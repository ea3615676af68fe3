import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_onnx
from onnx import TensorProto, helper, numpy_helper

from engines import build_engine, load_runner
from engines.base import Runner, TensorMeta, run_batched
from engines.cpu import cpu_device, cpu_fingerprint
from engines.errors import UserError
from engines.manifest import EngineManifest, check_engine
from engines.onnxruntime import Options
from engines.onnxruntime.runner import OnnxRuntimeRunner


@pytest.fixture
def model_path(tmp_path):
    return tiny_onnx.make_tiny_resnet(tmp_path / "m.onnx")


@pytest.fixture
def engine_dir(tmp_path, model_path):
    build_engine(model_path, tmp_path / "engine", options=Options(precision="fp32"))
    return tmp_path / "engine"


def make_qdq_model(path):
    """images -> QuantizeLinear -> DequantizeLinear -> Relu: the smallest INT8 (Q/DQ) graph."""
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
        helper.make_node("Relu", ["dq"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_engine_output_matches_plain_onnxruntime(engine_dir, model_path):
    images = tiny_onnx.random_images(5)
    expected = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"images": images})
    with load_runner(engine_dir) as runner:
        assert isinstance(runner, OnnxRuntimeRunner)
        assert runner.inputs == [TensorMeta("images", ("batch", 1, 8, 8), "float32")]
        assert runner.outputs == [TensorMeta("logits", ("batch", 3), "float32")]
        logits = runner.infer({"images": images})["logits"]
        assert runner.memory()["model_file_bytes"] == (engine_dir / "model.onnx").stat().st_size
    np.testing.assert_allclose(logits, expected[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer({"images": images})


def test_disabled_and_all_optimizations_agree_on_fp32(tmp_path, model_path):
    images = tiny_onnx.random_images(16)
    outputs = {}
    for level in ("disabled", "all"):
        manifest = build_engine(model_path, tmp_path / level, options=Options("fp32", graph_optimization=level))
        assert manifest.backend_options == {"graph_optimization": level, "intra_op_threads": None}
        with load_runner(tmp_path / level) as runner:
            outputs[level] = run_batched(runner, images)
    np.testing.assert_allclose(outputs["disabled"], outputs["all"], rtol=1e-4, atol=1e-5)


def test_manifest_round_trip(engine_dir, model_path):
    manifest = EngineManifest.read(engine_dir)
    assert manifest.backend == "onnxruntime"
    assert manifest.backend_version == ort.__version__
    assert manifest.precision == "fp32"
    assert manifest.device == cpu_device() and manifest.target == "cpu"
    assert manifest.model_sha256 == manifest.engine_sha256  # copied byte for byte
    assert json.loads((engine_dir / "engine.json").read_text())["schema"] == "mimicnorm-deploy/engine-manifest"
    changed = dataclasses.replace(manifest, precision="int8", build_flags={"x": 1})
    changed.write(engine_dir)
    assert EngineManifest.read(engine_dir) == changed


def test_directory_without_manifest_is_not_an_engine(tmp_path):
    with pytest.raises(UserError, match="not an engine directory"):
        load_runner(tmp_path)


def test_tampered_model_file_asks_for_rebuild(engine_dir):
    model_file = engine_dir / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(UserError, match="engine file changed since build; rebuild"):
        load_runner(engine_dir)


def test_engine_from_another_device_asks_for_rebuild(engine_dir):
    manifest = EngineManifest.read(engine_dir)
    here = cpu_device()
    other = {**here, "arch": "aarch64", "int8_dot_product": not here["int8_dot_product"]}
    dataclasses.replace(manifest, device_fingerprint=cpu_fingerprint(other)).write(engine_dir)
    with pytest.raises(UserError, match="built for aarch64 CPU .* this machine is .*: rebuild the engine on this dev"):
        load_runner(engine_dir)


def test_engine_from_another_backend_version_asks_for_rebuild(engine_dir):
    manifest = EngineManifest.read(engine_dir)
    dataclasses.replace(manifest, backend_version="0.0.1").write(engine_dir)
    with pytest.raises(UserError, match=r"onnxruntime 0\.0\.1, this machine is .*rebuild"):
        load_runner(engine_dir)


def test_engines_compare_device_fingerprints(engine_dir):
    manifest = dataclasses.replace(EngineManifest.read(engine_dir), device_fingerprint="NVIDIA H100 80GB HBM3")
    check_engine(manifest, engine_dir, "NVIDIA H100 80GB HBM3")
    with pytest.raises(UserError, match="built for NVIDIA H100 80GB HBM3, this machine is Orin: rebuild"):
        check_engine(manifest, engine_dir, "Orin")


def test_cpu_fingerprint_ignores_the_model_name_but_not_the_int8_path():
    here = cpu_device()
    assert cpu_fingerprint({**here, "model_name": "another CPU"}) == cpu_fingerprint(here)
    assert cpu_fingerprint({**here, "int8_dot_product": not here["int8_dot_product"]}) != cpu_fingerprint(here)


def test_old_manifest_asks_for_rebuild(engine_dir):
    document = json.loads((engine_dir / "engine.json").read_text())
    (engine_dir / "engine.json").write_text(json.dumps({**document, "schema_version": 1}))
    with pytest.raises(UserError, match=r"engine-manifest schema version 1 is not supported .*; rebuild the engine"):
        load_runner(engine_dir)


def test_unknown_backend_is_refused(engine_dir, model_path, tmp_path):
    dataclasses.replace(EngineManifest.read(engine_dir), backend="tensorrt-9").write(engine_dir)
    with pytest.raises(UserError, match="unknown backend 'tensorrt-9'; choose one of: onnxruntime"):
        load_runner(engine_dir)
    with pytest.raises(UserError, match="unknown backend 'tensorrt-9'; choose one of: onnxruntime"):
        build_engine(model_path, tmp_path / "e", backend="tensorrt-9")


def test_non_onnx_file_is_refused_and_leaves_nothing(tmp_path):
    bogus = tmp_path / "weights.onnx"
    bogus.write_text("this is not a protobuf")
    with pytest.raises(UserError, match="not an ONNX model .*'mimicnorm-deploy export'"):
        build_engine(bogus, tmp_path / "out" / "engine")
    assert not (tmp_path / "out").exists()


def test_model_onnxruntime_cannot_load_leaves_nothing(tmp_path, model_path):
    model = onnx.load(model_path)
    model.graph.node[3].op_type = "NoSuchOp"
    onnx.save(model, tmp_path / "broken.onnx")
    with pytest.raises(UserError, match="cannot load it"):
        build_engine(tmp_path / "broken.onnx", tmp_path / "engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "m.onnx"]


def test_rebuild_replaces_engine_but_never_a_foreign_directory(tmp_path, engine_dir, model_path):
    build_engine(model_path, engine_dir, options=Options(graph_optimization="basic", intra_op_threads=1))
    assert EngineManifest.read(engine_dir).backend_options == {"graph_optimization": "basic", "intra_op_threads": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or retired dirs left
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"precious")
    with pytest.raises(UserError, match="not an engine directory"):
        build_engine(model_path, run_dir)
    assert (run_dir / "checkpoint.pt").read_bytes() == b"precious"


def test_external_weights_are_inlined_into_the_engine(tmp_path, model_path):
    external = tmp_path / "external" / "model.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(model_path), external, save_as_external_data=True, location="weights.bin", size_threshold=0)
    manifest = build_engine(external, tmp_path / "engine")
    assert sorted(p.name for p in (tmp_path / "engine").iterdir()) == ["engine.json", "model.onnx"]
    assert manifest.engine_sha256 != manifest.model_sha256
    images = tiny_onnx.random_images(3)
    expected = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"images": images})
    with load_runner(tmp_path / "engine") as runner:
        np.testing.assert_allclose(runner.infer({"images": images})["logits"], expected[0], rtol=1e-6)


def test_precision_must_match_the_graph(tmp_path, model_path):
    with pytest.raises(UserError, match="is an fp32 model but precision 'int8'"):
        build_engine(model_path, tmp_path / "e", options=Options(precision="int8"))
    qdq = make_qdq_model(tmp_path / "qdq.onnx")
    with pytest.raises(UserError, match="is an int8 model"):
        build_engine(qdq, tmp_path / "e", options=Options(precision="fp32"))
    with pytest.raises(UserError, match="not one of"):
        build_engine(model_path, tmp_path / "e", options=Options(precision="INT8"))
    assert build_engine(qdq, tmp_path / "e", options=Options(graph_optimization="disabled")).precision == "int8"
    with load_runner(tmp_path / "e") as runner:
        out = runner.infer({"images": np.array([[-1.0, 0.004, 0.5, 2.0]], np.float32)})["out"]
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.27]], atol=1e-6)  # rounded to 0.01, clipped at 127


def test_run_batched_matches_one_big_batch_and_reports_progress(engine_dir):
    images = tiny_onnx.random_images(10).astype(np.float64)  # cast to the input's float32
    calls = []
    with load_runner(engine_dir) as runner:
        batched = run_batched(runner, images, batch_size=4, progress=lambda done, total: calls.append((done, total)))
        whole = runner.infer({"images": images.astype(np.float32)})["logits"]
    assert calls == [(4, 10), (8, 10), (10, 10)]
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6)


class FixedBatchRunner(Runner):
    """A fake engine built for batch 4 only (the shared feed check refuses other shapes); doubles its input."""

    inputs = [TensorMeta("x", (4, 2), "float32")]
    outputs = [TensorMeta("y", (4, 2), "float32")]

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, feeds):
        return {"y": feeds["x"] * 2}

    def memory(self):
        return {}


def test_run_batched_pads_the_last_batch_of_a_fixed_batch_engine():
    images = np.arange(14, dtype=np.float32).reshape(7, 2)
    with FixedBatchRunner() as runner:
        np.testing.assert_array_equal(run_batched(runner, images, batch_size=256), images * 2)


class BoundedBatchRunner(FixedBatchRunner):
    """A dynamic batch bounded to 2..3, as a TensorRT optimization profile bounds it; records the batches fed."""

    def __init__(self):
        super().__init__()
        self.fed = []

    @property
    def inputs(self):
        return [TensorMeta("x", ("batch", 2), "float32", min_shape=(2, 2), max_shape=(3, 2))]

    def _infer(self, feeds):
        self.fed.append(len(feeds["x"]))
        return super()._infer(feeds)


def test_run_batched_stays_within_the_engines_batch_bounds():
    images = np.arange(14, dtype=np.float32).reshape(7, 2)
    with BoundedBatchRunner() as runner:
        np.testing.assert_array_equal(run_batched(runner, images, batch_size=256), images * 2)
    assert runner.fed == [3, 3, 2]  # at most the max; the last image padded up to the min
