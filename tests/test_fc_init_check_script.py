"""scripts/fc_init_check.py: the MimicNorm classifier drawn as the authors draw it, for that call
only, and a real (two-step) training run through it."""

from unittest import mock

from script_loader import load_script

from mimicnorm_deploy.training.layers import NormClassifier
from mimicnorm_deploy.training.models.registry import create_model

QUICK = ["--dataset", "synthetic", "--arch", "resnet20", "--norm", "mimic", "--epochs", "1",
         "--max-steps-per-epoch", "2"]  # fmt: skip


def classifier_variance_times_fan_in(model) -> float:
    return model.fc.weight.var().item() * model.fc.in_features


def test_the_check_draws_the_mimicnorm_classifier_as_the_authors_and_leaves_the_product_alone(tmp_path):
    check = load_script("fc_init_check")
    with mock.patch.object(NormClassifier, "add_classifier", check.authors_add_classifier):
        mimic, bn = create_model("mobilenetv2_050", norm="mimic"), create_model("mobilenetv2_050", norm="bn")
    # 12,800 weights: the sample variance is within about 1 % of the drawn one.
    assert abs(classifier_variance_times_fan_in(mimic) - 2.0) < 0.2 and not mimic.fc.bias.any()
    assert abs(classifier_variance_times_fan_in(bn) - 1 / 3) < 0.03 and bn.fc.bias.any()  # BN twin: PyTorch's

    assert check.main(["train", *QUICK, "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
    # The patch ended with the call: the product's MimicNorm classifier is PyTorch's default again.
    assert abs(classifier_variance_times_fan_in(create_model("mobilenetv2_050", norm="mimic")) - 1 / 3) < 0.03
