"""MimicNorm's pieces as the authors implemented them, behind one norm factory."""

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.layers import (  # noqa: E402
    ReluGlobalAvgPool,
    ResidualScalar,
    attach_weight_centring,
    centred_convs,
)
from mimicnorm_deploy.training.models import create_model  # noqa: E402
from mimicnorm_deploy.training.train import activation_bytes_saved_for_backward  # noqa: E402


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



def _loss_and_grads(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("arch", "stem"),
    [("resnet20", "cifar"), ("resnet50", "imagenet"), ("mobilenetv2_050", "cifar"), ("shufflenetv2_050", "cifar")],
)
def test_scalars_folded_into_the_forward_give_the_straightforward_loss_and_gradients(arch, stem, monkeypatch):
    # The imagenet-stem ResNet-50 also covers the bottleneck and the scalar on projection shortcuts.
    torch.manual_seed(0)
    # In float64, so rounding (which differs between CPUs' kernels) is far below any wrong term.
    model = create_model(arch, norm="mimic", num_classes=5, in_chans=3, stem=stem).double()
    with torch.no_grad():  # scalars away from their init and non-zero biases, so every term counts
        for module in model.modules():
            if isinstance(module, ResidualScalar):
                module.scale.mul_(1.0 + torch.rand(()))
            elif isinstance(module, nn.Conv2d):
                module.bias.normal_(0.0, 0.1)
    images, labels = torch.rand(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 5, (4,))
    loss, grads = _loss_and_grads(model, images, labels)
    # The straightforward formulation: the scalar multiplies the conv's output.
    monkeypatch.setattr(ResidualScalar, "conv_forward", lambda self, conv, x: self(conv(x)))
    reference_loss, reference_grads = _loss_and_grads(model, images, labels)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=1e-12)
    scalar_grads = [name for name in grads if name.endswith("scale.scale") or name.endswith("_scale.scale")]
    assert scalar_grads and all(reference_grads[name].abs() > 0 for name in scalar_grads)
    # Gradients are O(1); in float32 the two orders' rounding differed by up to 3e-4 on one CPU (the
    # logits BN over a batch of 4 amplifies it), in float64 by ~1e-12, while a missing or wrong
    # term would differ by O(0.1).
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-8, atol=1e-8)


def _saved_bytes(model: nn.Module) -> int:
    """Bytes autograd keeps in one step of `model` on 8 one-channel 32 px images, 4 classes."""
    return activation_bytes_saved_for_backward(model, torch.rand(8, 1, 32, 32), torch.randint(0, 4, (8,)))["bytes"]


def test_scalars_folded_into_the_forward_do_not_keep_branch_outputs():
    torch.manual_seed(0)
    model = create_model("resnet20", norm="mimic", num_classes=4)
    folded = _saved_bytes(model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ResidualScalar, "conv_forward", lambda self, conv, x: self(conv(x)))
        straightforward = _saved_bytes(model)
    # Nine basic blocks, each branch output 8 x C x H x W float32 (C * H * W = 16384, 8192, 4096):
    # none of them is kept any more, and nothing (no scaled weight copy) is kept in their place.
    assert straightforward - folded == 4 * 8 * 3 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)


def test_scalars_folded_into_the_forward_are_as_accurate_under_bf16_autocast(monkeypatch):
    # bf16 rounds differently in the two orders, and through 20 layers both move the gradients by
    # ~15 % from float32's; the folded form must be no less accurate than the straightforward one.
    torch.manual_seed(0)
    model = create_model("resnet20", norm="mimic", num_classes=5, in_chans=1)
    images, labels = torch.rand(8, 1, 16, 16), torch.randint(0, 5, (8,))

    def relative_error(grads: dict, reference: dict) -> float:
        noise = sum(float(((grads[n] - reference[n]) ** 2).sum()) for n in reference)
        return (noise / sum(float((g**2).sum()) for g in reference.values())) ** 0.5

    fp32_loss, fp32_grads = _loss_and_grads(model, images, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _loss_and_grads(model, images, labels)
    monkeypatch.setattr(ResidualScalar, "conv_forward", lambda self, conv, x: self(conv(x)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference_loss, reference_grads = _loss_and_grads(model, images, labels)
    assert all(g.dtype == torch.float32 for g in grads.values())
    torch.testing.assert_close(loss, fp32_loss, rtol=2e-2, atol=2e-2)
    assert relative_error(grads, fp32_grads) <= 1.25 * relative_error(reference_grads, fp32_grads)
    assert relative_error(grads, fp32_grads) < 0.5


def _two_module_relu_pool(self, x: torch.Tensor) -> torch.Tensor:
    """What ReluGlobalAvgPool replaces: nn.ReLU, then nn.AdaptiveAvgPool2d(1), flattened."""
    return nn.AdaptiveAvgPool2d(1)(nn.ReLU()(x)).flatten(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_relu_global_avg_pool_gives_the_two_module_output_and_gradient(dtype, channels_last):
    torch.manual_seed(0)
    # 7 x 7: an area that is not a power of two, so the division's rounding is exercised too.
    x = torch.randn(3, 5, 7, 7, dtype=dtype)
    x[0, 0, 0, :3] = 0.0  # ReLU's gradient at exactly 0 is 0 in both forms
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weights = torch.randn(3, 5, dtype=dtype)  # a loss whose gradient differs per output
    pool = ReluGlobalAvgPool().train()
    results = []
    for forward in (pool, lambda x: _two_module_relu_pool(None, x)):
        leaf = x.clone().requires_grad_(True)
        out = forward(leaf)
        (out * weights).sum().backward()
        results.append((out.detach(), leaf.grad))
    (out, grad), (reference_out, reference_grad) = results
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, reference_out, rtol=0, atol=0)
    torch.testing.assert_close(grad, reference_grad)
    assert (grad[x <= 0] == 0).all() and (grad[x > 0] != 0).all()


@pytest.mark.parametrize("arch", ["mobilenetv2_050", "shufflenetv2_050"])
@pytest.mark.parametrize("norm", ["mimic", "bn"])
def test_relu_global_avg_pool_head_gives_the_two_module_loss_and_gradients(arch, norm, monkeypatch):
    torch.manual_seed(0)
    model = create_model(arch, norm=norm, num_classes=5, in_chans=3).double()
    images, labels = torch.rand(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 5, (4,))
    loss, grads = _loss_and_grads(model, images, labels)
    monkeypatch.setattr(ReluGlobalAvgPool, "forward", _two_module_relu_pool)
    reference_loss, reference_grads = _loss_and_grads(model, images, labels)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=1e-12)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("norm", ["mimic", "bn"])
def test_relu_global_avg_pool_head_keeps_a_byte_per_value_instead_of_four(norm, monkeypatch):
    torch.manual_seed(0)
    model = create_model("mobilenetv2_050", norm=norm, num_classes=4)
    masked = _saved_bytes(model)
    monkeypatch.setattr(ReluGlobalAvgPool, "forward", _two_module_relu_pool)
    # The head conv's output, 8 x 1280 x 4 x 4 at 32 px: kept as float32 by the ReLU, as bool here.
    assert _saved_bytes(model) - masked == (4 - 1) * 8 * 1280 * 4 * 4
