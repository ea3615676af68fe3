"""The (family x norm) matrix: every family builds, trains a step, freezes exactly and exports.

One representative per family keeps it fast (the registered depths share their blocks): ResNet
with basic blocks and the CIFAR stem, ResNet with bottlenecks and the ImageNet stem (projection
shortcut scalars, max-pool), VGG, MobileNetV2, ShuffleNetV2, SqueezeNet.
"""

import pytest

torch = pytest.importorskip("torch")

from test_freeze import _randomize_statistics  # noqa: E402
from torch import nn  # noqa: E402

from mimicnorm_deploy.training.checkpoint import CheckpointMeta, save_checkpoint  # noqa: E402
from mimicnorm_deploy.training.export import export_onnx  # noqa: E402
from mimicnorm_deploy.training.freeze import freeze_model  # noqa: E402
from mimicnorm_deploy.training.layers import ResidualScalar, attach_weight_centring, centred_convs, param_groups  # noqa: E402
from mimicnorm_deploy.training.models import create_model  # noqa: E402

# case: (arch, stem, input size). ResNet-18 at 16 px keeps its 2x2 last stage and the step cheap.
CASES = {
    "resnet-basic": ("resnet18", "cifar", 16),
    "resnet-bottleneck": ("resnet50", "imagenet", 64),
    "vgg": ("vgg11", "cifar", 32),
    "mobilenetv2": ("mobilenetv2_050", "cifar", 32),
    "shufflenetv2": ("shufflenetv2_050", "cifar", 32),
    "squeezenet": ("squeezenet1_1", "cifar", 32),
}
NORMS = ["mimic", "bn", "bn-revisited", "none"]
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("case", CASES)
def test_family_builds_trains_freezes_and_exports(case, norm, tmp_path):
    arch, stem, size = CASES[case]
    torch.manual_seed(0)
    model = create_model(arch, norm=norm, num_classes=5, in_chans=3, stem=stem, input_mean=MEAN, input_std=STD)
    optimizer = torch.optim.SGD(param_groups(model, norm, lr=0.01, weight_decay=5e-4), momentum=0.9)
    attach_weight_centring(model, optimizer)
    fc_before = model.fc.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.rand(2, 3, size, size)), torch.randint(0, 5, (2,)))
        loss.backward()
        # The unnormalized `none` control (ResNet-50 above all) starts with large gradients.
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.fc.weight, fc_before)
    if model.norm_spec.centre_min_fan_in is not None:
        centred = centred_convs(model, model.norm_spec.centre_min_fan_in)
        assert centred
        for conv in centred:
            assert conv.weight.detach().mean(dim=(1, 2, 3)).abs().max() < 1e-6

    model.eval()
    _randomize_statistics(model)
    meta = CheckpointMeta(arch, norm, 5, 3, size, MEAN, STD, [str(i) for i in range(5)], "test", stem=stem)
    check = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    frozen, frozen_meta, report = freeze_model(model, meta, check)
    assert report.passed and frozen_meta.norm == "none" and frozen_meta.frozen_from == norm
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, ResidualScalar)) for m in frozen.modules())

    # Every (family x norm) exports through the real checkpoint round trip.
    save_checkpoint(tmp_path / "frozen.safetensors", frozen, frozen_meta)
    exported = export_onnx(tmp_path / "frozen.safetensors", tmp_path / "model.onnx")
    assert "BatchNormalization" not in exported.nodes
    assert exported.nodes["Conv"] == sum(isinstance(m, nn.Conv2d) for m in frozen.modules())
