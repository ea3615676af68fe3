"""MimicNorm's pieces as the authors implemented them, behind one norm factory."""

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.layers import ResidualScalar, attach_weight_centring, centred_convs  # noqa: E402
from mimicnorm_deploy.training.models import create_model  # noqa: E402


def _channel_means(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().mean(dim=(1, 2, 3))


def test_weight_centring_holds_after_every_optimizer_step():
    torch.manual_seed(0)
    model = create_model("resnet20", norm="mimic", num_classes=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    attach_weight_centring(model, optimizer)
    centred = centred_convs(model, model.norm_spec.centre_min_fan_in)
    stem = model.stem.conv
    assert stem not in centred  # 1-channel 3x3 stem: fan-in 9 <= 50, skipped as in the authors' CIFAR code
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.rand(8, 1, 16, 16)), torch.randint(0, 4, (8,))).backward()
        optimizer.step()
        for conv in centred:
            assert _channel_means(conv).abs().max() < 1e-6
    # The gradient step moved the uncentred stem's means away from zero: centring was selective.
    assert _channel_means(stem).abs().max() > 1e-4
    # Without the hook the invariant breaks after one step, so the test above can fail.
    plain_model = create_model("resnet20", norm="mimic", num_classes=4)
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(plain_model(torch.rand(8, 1, 16, 16)), torch.randint(0, 4, (8,))).backward()
    plain_optimizer.step()
    plain_centred = centred_convs(plain_model, 50)
    assert max(float(_channel_means(c).abs().max()) for c in plain_centred) > 1e-6


def test_residual_scalars_start_at_1_2_squared_over_block_index():
    model = create_model("resnet20", norm="mimic")
    scalars = [float(m.scale.detach()) for m in model.modules() if isinstance(m, ResidualScalar)]
    assert len(scalars) == 9
    assert scalars[:3] == pytest.approx([1.44, 0.72, 0.48])
    assert scalars[-1] == pytest.approx(1.44 / 9)


def test_norm_factory_builds_the_twins():
    mimic, bn = create_model("resnet20", norm="mimic"), create_model("resnet20", norm="bn")
    mimic_convs = [m for m in mimic.modules() if isinstance(m, nn.Conv2d)]
    bn_convs = [m for m in bn.modules() if isinstance(m, nn.Conv2d)]
    assert len(mimic_convs) == len(bn_convs)
    assert all(c.bias is not None and not c.bias.any() for c in mimic_convs)  # bias, initialised to 0
    assert all(c.bias is None for c in bn_convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == len(bn_convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in mimic.modules())
    assert isinstance(mimic.logits_norm, nn.BatchNorm1d) and not mimic.logits_norm.affine
    assert not any(isinstance(m, ResidualScalar) for m in bn.modules())


def test_mimic_init_is_normal_with_variance_2_over_fan_in():
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", norm="mimic")
    conv = model.stages[3][1].conv2.conv  # 512 x 512 x 3 x 3: enough samples for a tight estimate
    fan_in = 512 * 9
    assert float(conv.weight.detach().var()) == pytest.approx(2 / fan_in, rel=0.02)


def test_unknown_names_are_clear_errors():
    with pytest.raises(UserError, match="unknown architecture 'resnet21'.*resnet20"):
        create_model("resnet21")
    with pytest.raises(UserError, match="unknown norm 'layer'"):
        create_model("resnet20", norm="layer")
