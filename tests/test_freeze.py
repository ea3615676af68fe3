"""Folding is exact: frozen plain conv+bias nets equal the trained nets they come from."""

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.checkpoint import CheckpointMeta  # noqa: E402
from mimicnorm_deploy.training.freeze import fold_batchnorm, fold_scalar, freeze_model  # noqa: E402
from mimicnorm_deploy.training.models import create_model  # noqa: E402


def _meta(arch: str, norm: str, size: int = 16) -> CheckpointMeta:
    return CheckpointMeta(arch, norm, 10, 1, size, [0.3], [0.4], [str(i) for i in range(10)], "test")


def _randomize_statistics(model: nn.Module, seed: int = 0) -> None:
    """Move every BN statistic, affine parameter, bias and residual scalar away from its
    initial value, so a fold that ignored any of them would be caught."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                uniform(module.running_mean, -1, 1)
                uniform(module.running_var, 0.3, 3)
                if module.affine:
                    uniform(module.weight, 0.2, 2)
                    uniform(module.bias, -1, 1)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                uniform(module.bias, -0.2, 0.2)
        for name, param in model.named_parameters():
            if name.endswith("scale.scale"):
                uniform(param, 0.1, 2)


@pytest.mark.parametrize("norm", ["mimic", "bn"])
@pytest.mark.parametrize("arch", ["resnet20", "resnet18_cifar"])
def test_fold_is_exact_on_random_nets(arch, norm):
    model = create_model(arch, norm=norm, input_mean=[0.3], input_std=[0.4]).eval()
    _randomize_statistics(model)
    images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    frozen, meta, report = freeze_model(model, _meta(arch, norm), images)
    assert report.passed and report.top1_agreement == 1.0
    assert report.max_abs_diff <= report.tolerance
    # The frozen model is plain: no BN, no residual scalar, every conv has a bias.
    assert meta.norm == "none" and meta.frozen_from == norm
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in frozen.modules())
    assert not any("scale.scale" in name for name, _ in frozen.named_parameters())
    assert all(m.bias is not None for m in frozen.modules() if isinstance(m, nn.Conv2d))
    with torch.inference_mode():
        assert torch.allclose(frozen(images), model(images), atol=report.tolerance)


def test_fold_batchnorm_matches_conv_then_batchnorm():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5).eval()
    _randomize_statistics(bn)
    w, b = fold_batchnorm(conv.weight.detach(), conv.bias.detach(), bn.running_mean, bn.running_var, bn.eps,
                          bn.weight.detach(), bn.bias.detach())  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        expected = bn(conv(x))
        got = nn.functional.conv2d(x, w, b, padding=1)
    assert torch.allclose(expected, got, atol=1e-5)


def test_fold_scalar_scales_weights_and_bias():
    w, b = torch.randn(4, 2, 3, 3), torch.randn(4)
    w2, b2 = fold_scalar(w, b, torch.tensor(0.5))
    assert torch.equal(w2, w * 0.5) and torch.equal(b2, b * 0.5)


def test_freeze_refuses_uncentred_mimic_weights():
    model = create_model("resnet20", norm="mimic").eval()
    with torch.no_grad():
        model.stages[0][0].conv1.conv.weight.add_(0.1)  # no longer zero-mean per channel
    with pytest.raises(UserError, match="not zero-mean"):
        freeze_model(model, _meta("resnet20", "mimic"), torch.rand(4, 1, 16, 16))


def test_freeze_refuses_a_wrong_fold(monkeypatch):
    # A folding rule that forgot the residual scalar must be caught by the equivalence check.
    import mimicnorm_deploy.training.freeze as freeze

    monkeypatch.setattr(freeze, "fold_scalar", lambda w, b, s: (w, b))
    model = create_model("resnet20", norm="mimic").eval()
    with pytest.raises(UserError, match="fold refused"):
        freeze.freeze_model(model, _meta("resnet20", "mimic"), torch.rand(8, 1, 16, 16))
