"""Checkpoints: safetensors + metadata round trip, and refusals of files that are not ours."""

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from mimicnorm_deploy.training.models import create_model  # noqa: E402


def _meta(**overrides):
    fields = dict(arch="resnet20", norm="mimic", num_classes=10, in_chans=1, image_size=32, input_mean=[0.2],
                  input_std=[0.3], classes=[str(i) for i in range(10)], dataset="test", epoch=3,
                  metrics={"test_accuracy": 0.9})  # fmt: skip
    return CheckpointMeta(**{**fields, **overrides})


def test_round_trip_restores_weights_and_metadata(tmp_path):
    meta = _meta()
    model = meta.build_model()
    with torch.no_grad():
        model.logits_norm.running_var.fill_(2.5)
    save_checkpoint(tmp_path / "c.safetensors", model, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded_meta == meta
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    assert torch.equal(model(x), loaded(x))


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(UserError, match="not a safetensors checkpoint"):
        load_checkpoint(tmp_path / "text.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UserError, match="without mimicnorm-deploy metadata"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(UserError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    meta = _meta()
    save_checkpoint(tmp_path / "c.safetensors", meta.build_model(), meta)
    with pytest.raises(UserError, match="is for 'resnet20', not 'resnet18_cifar'"):
        load_checkpoint(tmp_path / "c.safetensors", expect_arch="resnet18_cifar")
    # Metadata that claims another architecture than the weights fit.
    lying = _meta(arch="resnet18_cifar")
    save_checkpoint(tmp_path / "lying.safetensors", create_model("resnet20", norm="mimic"), lying)
    with pytest.raises(UserError, match="do not fit resnet18_cifar/mimic"):
        load_checkpoint(tmp_path / "lying.safetensors")
