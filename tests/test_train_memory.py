"""The profile-memory API: MimicNorm vs its BN twin, per step, on CPU (CUDA figures need a GPU)."""

import pytest

torch = pytest.importorskip("torch")

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.memory import compare_memory, profile_memory  # noqa: E402


def test_mimicnorm_needs_less_training_memory_than_bn():
    report = compare_memory("resnet20", batch_size=8, input_size=16, in_chans=3, num_classes=10)
    mimic, bn = report["norms"]["mimic"], report["norms"]["bn"]
    assert report["ratio_of"] == "mimic/bn" and report["ratios"]["activation_bytes"] < 1
    assert mimic["training_bytes"] < bn["training_bytes"]
    for profile in (mimic, bn):
        # SGD momentum: one buffer per trained parameter, and every parameter trains here.
        assert profile["gradient_bytes"] == profile["optimizer_state_bytes"] == profile["parameter_bytes"]
        assert profile["parameter_bytes"] == 4 * profile["parameters"]
        assert "cuda_peak_allocated_bytes" not in profile  # CPU: device-independent figures only
    assert mimic["buffer_bytes"] < bn["buffer_bytes"]  # one logits BN against a BN per conv


def test_bf16_shrinks_saved_activations_and_fp16_needs_cuda():
    fp32 = profile_memory("resnet20", "mimic", 16, 16, in_chans=1)
    bf16 = profile_memory("resnet20", "mimic", 16, 16, in_chans=1, amp="bf16")
    # Not half: autocast's bf16 copies of the weights are saved for backward too.
    assert bf16["activation_bytes"] < 0.75 * fp32["activation_bytes"]
    with pytest.raises(UserError, match="fp16"):
        profile_memory("resnet20", "mimic", 4, 16, amp="fp16")
    with pytest.raises(UserError, match="unknown architecture"):
        profile_memory("resnet7", "mimic", 4, 16)
