"""Export: ONNX without BatchNormalization, dynamic batch, equal to the frozen model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.checkpoint import CheckpointMeta, save_checkpoint  # noqa: E402
from mimicnorm_deploy.training.export import export_onnx  # noqa: E402
from mimicnorm_deploy.training.freeze import freeze_checkpoint  # noqa: E402


@pytest.mark.parametrize("norm", ["mimic", "bn"])
def test_exported_graph_has_no_batchnorm_and_a_dynamic_batch(tmp_path, norm):
    meta = CheckpointMeta("resnet20", norm, 4, 1, 16, [0.2], [0.3], list("abcd"), "test")
    model = meta.build_model()
    save_checkpoint(tmp_path / "trained.safetensors", model, meta)
    freeze_checkpoint(tmp_path / "trained.safetensors", tmp_path / "frozen.safetensors")
    report = export_onnx(tmp_path / "frozen.safetensors", tmp_path / "model.onnx")

    graph = onnx.load(str(tmp_path / "model.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert graph.opset_import[0].version >= 17 and report.opset >= 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((5, 1, 16, 16), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.allclose(session.run(None, {"images": x})[0], expected, atol=1e-4)


def test_unfrozen_checkpoint_is_refused_and_nothing_written(tmp_path):
    meta = CheckpointMeta("resnet20", "mimic", 4, 1, 16, [0.2], [0.3], list("abcd"), "test")
    save_checkpoint(tmp_path / "trained.safetensors", meta.build_model(), meta)
    with pytest.raises(UserError, match="run 'mimicnorm-deploy freeze' first"):
        export_onnx(tmp_path / "trained.safetensors", tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
