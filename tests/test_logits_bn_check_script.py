"""scripts/logits_bn_check.py: a real (two-step) training run with an affine logits BatchNorm1d,
which the product's own Norm does not build and freeze refuses."""

import torch
from safetensors.torch import load_file
from script_loader import load_script

from mimicnorm_deploy.cli import main as cli_main
from mimicnorm_deploy.training.layers import get_norm

QUICK = ["--dataset", "synthetic", "--arch", "resnet20", "--norm", "mimic", "--epochs", "1",
         "--max-steps-per-epoch", "2"]  # fmt: skip


def test_the_check_trains_an_affine_logits_bn_that_the_product_refuses_to_freeze(tmp_path, capsys):
    check = load_script("logits_bn_check")
    out = tmp_path / "run"
    assert check.main(["train", *QUICK, "--out", str(out)]) == 0
    weights = load_file(out / "checkpoint.safetensors")
    # Trained: gamma and beta left their initial 1 and 0.
    assert not torch.equal(weights["logits_norm.weight"], torch.ones(10))
    assert not torch.equal(weights["logits_norm.bias"], torch.zeros(10))
    # The patch ended with the call: the product's MimicNorm is the authors' affine-free layer again.
    assert get_norm("mimic").logits_norm(10).affine is False
    capsys.readouterr()
    assert cli_main(["freeze", str(out / "checkpoint.safetensors"), "--out", str(tmp_path / "frozen.safetensors")]) != 0
    assert "logits_norm.weight" in capsys.readouterr().err
    assert not (tmp_path / "frozen.safetensors").exists()
