"""The TensorRT backend on real TensorRT and a real GPU: skipped cleanly wherever either is absent
(as on the machines this project is developed on). The fake-based tests prove our calls; these
prove TensorRT agrees."""

import numpy as np
import onnxruntime as ort
import pytest
from tiny_onnx import make_tiny_resnet, random_images

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from engines.errors import UserError
    from engines.tensorrt.cuda import load_cuda

    try:
        cuda = load_cuda()
        cuda.compute_capability()
    except (UserError, RuntimeError) as error:
        pytest.skip(f"no usable CUDA device: {error}")
    return cuda


@pytest.mark.parametrize(("precision", "atol"), [("as-typed", 1e-3), ("fp16", 5e-2)])
def test_engine_matches_onnxruntime(gpu, tmp_path, precision, atol):
    import tensorrt as trt

    from engines.tensorrt import Options, Runner, build_engine

    if precision == "fp16" and int(trt.__version__.split(".")[0]) >= 11:
        pytest.skip("TensorRT 11 has no FP16 flag (build the FP16 model as-typed)")
    model = make_tiny_resnet(tmp_path / "model.onnx")
    build_engine(model, tmp_path / "engine", Options(precision=precision, max_batch=8,
                                                      timing_cache_dir=str(tmp_path / "timing")))  # fmt: skip
    images = random_images(8)
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    with Runner(tmp_path / "engine") as runner:
        runner.activate()
        np.testing.assert_allclose(runner.infer({"images": images})["logits"], expected, atol=atol)
        assert runner.timing()["gpu_compute_ms"] > 0
