"""The model zoo: faithful families, MimicNorm's per-family details, bn-revisited's rules, registry."""

import math

import pytest

torch = pytest.importorskip("torch")

from test_freeze import _randomize_statistics  # noqa: E402
from torch import nn  # noqa: E402

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.checkpoint import CheckpointMeta, save_checkpoint  # noqa: E402
from mimicnorm_deploy.training.export import export_onnx  # noqa: E402
from mimicnorm_deploy.training.freeze import freeze_model  # noqa: E402
from mimicnorm_deploy.training.layers import (  # noqa: E402
    InputBatchNorm,
    InputNorm,
    ResidualScalar,
    attach_weight_centring,
    centred_convs,
    param_groups,
)
from mimicnorm_deploy.training.models import create_model, describe_models, list_models  # noqa: E402

# torchvision's parameter counts (ImageNet stem, 3 channels, 1000 classes): the BN twins are the
# standard architectures, and SqueezeNet 1.1 (no BN in torchvision) matches our plain `none`.
TORCHVISION_PARAMS = {
    ("resnet18", "bn"): 11_689_512,
    ("resnet50", "bn"): 25_557_032,
    ("mobilenetv2_100", "bn"): 3_504_872,
    ("shufflenetv2_050", "bn"): 1_366_792,
    ("shufflenetv2_100", "bn"): 2_278_604,
    ("squeezenet1_1", "none"): 1_235_496,
}


@pytest.mark.parametrize(("arch", "norm"), TORCHVISION_PARAMS)
def test_bn_twins_are_the_standard_architectures(arch, norm):
    model = create_model(arch, norm=norm, num_classes=1000, in_chans=3, stem="imagenet")
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[arch, norm]


def test_describe_models_lists_every_model_with_params_and_macs():
    rows = {row["name"]: row for row in describe_models(32, 3, 100)}
    assert set(rows) == set(list_models())
    # docs/BACKGROUND.md section 4: ResNet-18 at CIFAR size is 0.56 GMAC.
    assert rows["resnet18"]["macs"] == pytest.approx(0.56e9, rel=0.01)
    assert rows["resnet18"]["macs"] == rows["resnet18_cifar"]["macs"]
    assert all(row["params"] > 0 and row["macs"] > 0 for row in rows.values())
    imagenet = {row["name"] for row in describe_models(64, 3, 10, stem="imagenet")}
    assert "resnet20" not in imagenet and "resnet50" in imagenet


def test_unknown_family_norm_or_stem_are_clear_errors():
    with pytest.raises(UserError, match="unknown architecture 'resnet19'.*mobilenetv2_050"):
        create_model("resnet19")
    with pytest.raises(UserError, match="unknown norm 'group'.*bn-revisited"):
        create_model("vgg11", norm="group")
    with pytest.raises(UserError, match="unknown stem 'tiny'"):
        create_model("resnet50", stem="tiny")
    with pytest.raises(UserError, match="resnet18_cifar is built only with the cifar stem"):
        create_model("resnet18_cifar", stem="imagenet")


def _scalars(model: nn.Module) -> dict[str, float]:
    return {name: float(m.scale.detach()) for name, m in model.named_modules() if isinstance(m, ResidualScalar)}


def test_resnet_scalars_bottleneck_and_imagenet_projection_shortcut():
    scalars = _scalars(create_model("resnet50", stem="imagenet"))
    assert scalars["stages.0.0.scale"] == pytest.approx(1.2**3)
    assert scalars["stages.3.2.scale"] == pytest.approx(1.2**3 / 16)
    # Projection shortcuts (first block of each stage) carry a scalar 1.2 with the ImageNet stem ...
    assert [scalars[f"stages.{i}.0.shortcut_scale"] for i in range(4)] == pytest.approx([1.2] * 4)
    assert not any(name.startswith("stages.0.1.shortcut") for name in scalars)
    # ... and none with the CIFAR stem, as the authors' CIFAR ResNets.
    assert not any("shortcut" in name for name in _scalars(create_model("resnet50", stem="cifar")))


def test_mobilenetv2_scalars_count_dense_convs_and_residual_blocks():
    model = create_model("mobilenetv2_100")
    scalars = _scalars(model)
    blocks = list(model.blocks)
    assert scalars["blocks.0.scale"] == pytest.approx(1.2)  # t == 1: one dense conv, no shortcut
    assert scalars["blocks.1.scale"] == pytest.approx(1.2**2)  # downsampling: no 1/k
    assert blocks[2].residual and scalars["blocks.2.scale"] == pytest.approx(1.2**2 / 1)
    assert blocks[4].residual and scalars["blocks.4.scale"] == pytest.approx(1.2**2 / 2)
    residual_blocks = sum(block.residual for block in blocks)
    assert residual_blocks == 10
    assert scalars[f"blocks.{len(blocks) - 2}.scale"] == pytest.approx(1.2**2 / residual_blocks)


def test_shufflenetv2_scalars_have_no_depth_division():
    scalars = _scalars(create_model("shufflenetv2_050"))
    branch = [v for k, v in scalars.items() if k.endswith("branch_scale")]
    shortcut = [v for k, v in scalars.items() if k.endswith("shortcut_scale")]
    assert len(branch) == 16 and branch == pytest.approx([1.44] * 16)
    assert len(shortcut) == 3 and shortcut == pytest.approx([1.2] * 3)
    assert scalars["head_scale"] == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("arch", "module", "variance"),
    [
        ("vgg16", "features.24.conv", 2.8 / (512 * 9)),  # VGG: 2.8 / n
        ("shufflenetv2_100", "stages.2.1.branch_dw.conv", 2 / (9 * 4)),  # depthwise: max(4, 1) per group
        ("squeezenet1_1", "features.10.expand3x3.conv", 2.8 / (9 * 64)),
        ("mobilenetv2_100", "blocks.16.depthwise.conv", 2 / (9 * 2)),
        ("resnet50", "stages.3.1.conv2.conv", 2 / (512 * 9)),
    ],
)
def test_mimic_init_variances_per_family(arch, module, variance):
    torch.manual_seed(0)
    conv = create_model(arch).get_submodule(module)
    samples = conv.weight.numel()
    assert samples > 2000
    # Four standard errors of a normal sample variance: sqrt(2 / n) relative.
    assert float(conv.weight.detach().var()) == pytest.approx(variance, rel=4 * math.sqrt(2 / samples))
    assert not conv.bias.any()


@pytest.mark.parametrize("arch", ["mobilenetv2_050", "shufflenetv2_050"])
def test_centring_skips_depthwise_convs_and_leaves_them_untouched(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, in_chans=3)
    twin = create_model(arch, num_classes=4, in_chans=3)
    twin.load_state_dict(model.state_dict())
    depthwise = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise
    centred = {id(c) for c in centred_convs(model, model.norm_spec.centre_min_fan_in)}
    assert not any(id(model.get_submodule(name)) in centred for name in depthwise)

    # One step from identical weights and data: the net with the centring hook and the one
    # without must end with the same depthwise weights (the hook never touches them) while the
    # hook re-centres every dense conv it selects.
    images, labels = torch.rand(4, 3, 32, 32), torch.randint(0, 4, (4,))
    for net, centring in ((model, True), (twin, False)):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        if centring:
            attach_weight_centring(net, optimizer)
        nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    for name in depthwise:
        moved = model.get_submodule(name).weight.detach()
        assert torch.allclose(moved, twin.get_submodule(name).weight.detach(), rtol=0, atol=1e-7)
        assert moved.mean(dim=(1, 2, 3)).abs().max() > 1e-6  # not zero-mean: never centred
    for conv in centred_convs(model, model.norm_spec.centre_min_fan_in):
        assert conv.weight.detach().mean(dim=(1, 2, 3)).abs().max() < 1e-6


def test_bn_revisited_initialises_gamma_to_a_tenth():
    model = create_model("resnet20", norm="bn-revisited")
    gammas = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert gammas and all(torch.all(g == 0.1) for g in gammas)
    assert all(torch.all(m.weight == 1) for m in create_model("resnet20", norm="bn").modules()
               if isinstance(m, nn.BatchNorm2d))  # fmt: skip


def test_param_groups_carry_each_norms_optimizer_rules():
    model = create_model("resnet20", norm="bn-revisited")
    groups = {g["name"]: g for g in param_groups(model, "bn-revisited", lr=0.1, weight_decay=5e-4)}
    assert set(groups) == {"weights", "bn_gammas", "other_1d"}
    assert groups["weights"]["lr"] == 0.1 and groups["weights"]["weight_decay"] == 5e-4
    assert groups["bn_gammas"]["lr"] == pytest.approx(0.001) and groups["bn_gammas"]["weight_decay"] == 0
    assert groups["other_1d"]["lr"] == 0.1 and groups["other_1d"]["weight_decay"] == 0
    assert all(p.dim() > 1 for p in groups["weights"]["params"])
    assert all(p.dim() <= 1 for g in ("bn_gammas", "other_1d") for p in groups[g]["params"])
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len(grouped) == len(list(model.parameters())) == len({id(p) for p in grouped})

    # MimicNorm and plain BN keep the authors' recipe: every parameter at lr with weight decay.
    mimic = create_model("resnet20", norm="mimic")
    for group in param_groups(mimic, mimic.norm_spec, lr=0.1, weight_decay=5e-4):
        assert group["lr"] == 0.1 and group["weight_decay"] == 5e-4


def test_input_batchnorm_trains_without_beta_and_folds_into_the_input_scale_shift(tmp_path):
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", norm="bn-revisited-input-bn", num_classes=3, in_chans=2,
                         input_mean=[0.5, 0.2], input_std=[0.3, 0.1])  # fmt: skip
    assert isinstance(model.input_norm, InputBatchNorm)
    bn = model.input_norm.bn
    assert torch.allclose(bn.weight, torch.full((2,), 0.058)) and not bn.bias.requires_grad
    groups = param_groups(model, model.norm_spec, lr=0.1, weight_decay=5e-4)
    assert not any(p is bn.bias for g in groups for p in g["params"])
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.rand(4, 2, 32, 32)), torch.randint(0, 3, (4,))).backward()
        optimizer.step()
    assert torch.equal(bn.bias, torch.zeros(2)) and not torch.allclose(bn.weight, torch.full((2,), 0.058))

    model.eval()
    _randomize_statistics(model)
    with torch.no_grad():
        bn.bias.zero_()  # frozen at 0 in training; the fold handles any value, but keep the model honest
    meta = CheckpointMeta("squeezenet1_1", "bn-revisited-input-bn", 3, 2, 32, [0.5, 0.2], [0.3, 0.1],
                          ["a", "b", "c"], "test")  # fmt: skip
    frozen, frozen_meta, report = freeze_model(model, meta, torch.rand(8, 2, 32, 32))
    assert report.passed
    assert type(frozen.input_norm) is InputNorm
    save_checkpoint(tmp_path / "frozen.safetensors", frozen, frozen_meta)
    exported = export_onnx(tmp_path / "frozen.safetensors", tmp_path / "model.onnx")
    assert "BatchNormalization" not in exported.nodes


def test_resnet18_cifar_is_resnet18_with_the_cifar_stem():
    torch.manual_seed(0)
    a = create_model("resnet18_cifar", norm="bn")
    torch.manual_seed(0)
    b = create_model("resnet18", norm="bn")
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_imagenet_stems_downsample_by_four_and_freeze_exactly():
    torch.manual_seed(0)
    model = create_model("shufflenetv2_050", in_chans=3, stem="imagenet").eval()
    assert model.stem.conv.stride == (2, 2) and isinstance(model.stem_pool, nn.MaxPool2d)
    _randomize_statistics(model)
    meta = CheckpointMeta("shufflenetv2_050", "mimic", 10, 3, 64, [0.0] * 3, [1.0] * 3,
                          [str(i) for i in range(10)], "test", stem="imagenet")  # fmt: skip
    frozen, _, report = freeze_model(model, meta, torch.rand(4, 3, 64, 64))
    assert report.passed and frozen.stem_type == "imagenet" and frozen.stem.conv.stride == (2, 2)
