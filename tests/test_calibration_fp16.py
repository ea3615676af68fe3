from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from qdq_helpers import quantize
from tiny_onnx import make_tiny_resnet, random_images

from calibration.fp16 import convert_fp16, fp16_overflows
from calibration.metrics import sqnr_db, top1_agreement
from calibration.quantize import QuantizeConfig
from calibration.ranges import calibrate_ranges
from engines.errors import UserError


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    return make_tiny_resnet(tmp_path_factory.mktemp("fp32") / "model.onnx")


def run(model_path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def float_types(model: onnx.ModelProto) -> set[int]:
    """Element types of every initializer and every typed tensor of the graph."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info]
    return {init.data_type for init in model.graph.initializer} | {i.type.tensor_type.elem_type for i in infos}


def test_fp16_model_is_pure_fp16_with_fp32_io_and_runs(fp32_model, tmp_path):
    path = convert_fp16(fp32_model, tmp_path / "model.fp16.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert float_types(model) == {TensorProto.FLOAT16}  # no FP32 weight or activation inside
    assert [i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)] == [TensorProto.FLOAT] * 2
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["logits"]
    images = random_images(32)
    logits = run(path, images)
    assert logits.dtype == np.float32
    reference = run(fp32_model, images)
    assert sqnr_db(reference, logits) > 40
    assert top1_agreement(reference, logits) == 1.0


def test_fp16_io_when_asked(fp32_model, tmp_path):
    model = onnx.load(convert_fp16(fp32_model, tmp_path / "model.fp16.onnx", keep_io_fp32=False))
    assert not any(node.op_type == "Cast" for node in model.graph.node)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert run(tmp_path / "model.fp16.onnx", random_images(4).astype(np.float16)).dtype == np.float16


def test_constant_beyond_fp16_is_refused_by_name(tmp_path):
    model = onnx.load(make_tiny_resnet(tmp_path / "model.onnx"))
    bias = next(init for init in model.graph.initializer if init.name == "conv2.bias")
    bias.CopyFrom(numpy_helper.from_array(np.array([0.1, 7e4, 0.0, -0.2], np.float32), "conv2.bias"))
    onnx.save(model, tmp_path / "big.onnx")
    assert fp16_overflows(model) == {"conv2.bias": 7e4}
    with pytest.raises(UserError, match=r"'conv2.bias' \(\|x\| up to 7e\+04\)"):
        convert_fp16(tmp_path / "big.onnx", tmp_path / "out" / "model.fp16.onnx")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_constant_node_beyond_fp16_is_found():
    constant = helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.array([1e6], np.float32), "value")
    )
    graph = helper.make_graph([constant], "g", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, [1])])
    assert fp16_overflows(helper.make_model(graph)) == {"k": 1e6}


def test_calibrated_activation_beyond_fp16_is_refused_by_name(fp32_model, tmp_path):
    # The weights fit FP16, but inputs 30000x larger push the activations past 65504.
    ranges = calibrate_ranges(fp32_model, random_images(32) * 30_000, batch_size=16)
    overflowing = {name for name, value in ranges.max_abs.items() if value > 65504}
    assert overflowing and fp16_overflows(onnx.load(fp32_model)) == {}
    with pytest.raises(UserError, match=r"FP16 cannot hold 'c1' \(\|x\| up to 1.8\d*e\+05\)"):
        convert_fp16(fp32_model, tmp_path / "model.fp16.onnx", activation_max_abs=ranges.max_abs)
    assert not (tmp_path / "model.fp16.onnx").exists()
    # within range: fine
    convert_fp16(fp32_model, tmp_path / "ok.fp16.onnx", activation_max_abs={"x_scaled": 60_000.0})


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda tmp, fp32: tmp / "missing.onnx", "no such file"),
        (lambda tmp, fp32: _write(tmp / "junk.onnx", b"not a model"), "not an ONNX model"),
        (
            lambda tmp, fp32: Path(
                quantize(fp32, random_images(32), tmp / "int8.onnx", QuantizeConfig()).output_path
            ),
            "already quantized",
        ),
        (lambda tmp, fp32: fp32, "overwrite"),
    ],
)
def test_bad_input_raises_user_error(fp32_model, tmp_path, make_input, message):
    source = make_input(tmp_path, fp32_model)
    out = fp32_model if message == "overwrite" else tmp_path / "out.onnx"
    with pytest.raises(UserError, match=message):
        convert_fp16(source, out)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
