"""Trainer: artifacts, schedule, and the activation-memory probe."""

import json

import pytest

torch = pytest.importorskip("torch")

from mimicnorm_deploy.training.data import make_synthetic  # noqa: E402
from mimicnorm_deploy.training.models import create_model  # noqa: E402
from mimicnorm_deploy.training.train import (  # noqa: E402
    TrainConfig,
    activation_bytes_saved_for_backward,
    lr_factor,
    train,
)


def test_schedule_warms_up_then_decays():
    config = TrainConfig(epochs=2, warmup_epochs=0.5)
    factors = [lr_factor(step, 10, config) for step in range(20)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[5:], factors[6:], strict=False))
    assert factors[-1] < 0.05
    step_config = TrainConfig(epochs=3, warmup_epochs=0, schedule="step", milestones=[1, 2])
    assert [lr_factor(s, 10, step_config) for s in (5, 15, 25)] == pytest.approx([1.0, 0.1, 0.01])


def test_mimicnorm_saves_less_activation_memory_than_its_bn_twin():
    images, labels = torch.rand(16, 1, 16, 16), torch.randint(0, 10, (16,))
    mimic = activation_bytes_saved_for_backward(create_model("resnet20", norm="mimic"), images, labels)
    bn = activation_bytes_saved_for_backward(create_model("resnet20", norm="bn"), images, labels)
    # Each BatchNorm2d saves its own input/output besides the conv's: BN must cost more.
    assert 0 < mimic["bytes"] < bn["bytes"]
    # Lower bound: every conv saves at least its input, and the stem's input is the batch itself.
    assert mimic["bytes"] >= images.numel() * 4


def test_training_writes_checkpoint_metrics_and_report(tmp_path):
    dataset = make_synthetic(128)
    config = TrainConfig(norm="mimic", epochs=2, batch_size=32, lr=0.05, max_steps_per_epoch=3)
    result = train(config, dataset, tmp_path, progress=lambda _: None)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1]["steps"] == 6
    assert (tmp_path / "checkpoint.safetensors").is_file()
    report = json.loads((tmp_path / "train_report.json").read_text())
    assert report["schema"] == "mimicnorm-deploy/train-report" and report["activation_memory"]["bytes"] > 0
    assert result.mean_step_ms > 0


def test_imagenet_style_augmentation_trains_and_unknown_styles_are_refused(tmp_path):
    from engines.errors import UserError

    dataset = make_synthetic(64)
    config = TrainConfig(epochs=1, batch_size=16, max_steps_per_epoch=2, augment_style="resized-crop")
    result = train(config, dataset, tmp_path, progress=lambda _: None)
    assert result.epochs[-1]["steps"] == 2
    with pytest.raises(UserError, match="unknown augmentation"):
        TrainConfig(augment_style="mixup").validate()
