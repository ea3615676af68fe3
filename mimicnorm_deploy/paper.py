"""Published figures the toolkit's own measurements are compared against (torch-free).

MimicNorm (Fei, Dai, Li, Zou, Xiong, AAAI 2021, arXiv 2010.09278), CIFAR-100 table: training
memory in MB as nvidia-smi reported it at batch 256, BN -> MimicNorm. nvidia-smi shows the whole
process's device memory (CUDA context and the allocator's cache included), not peak allocated bytes.
"""

# Keyed by this toolkit's model names.
CIFAR100_TRAINING_MEMORY_MB = {
    "vgg11": (2971, 2851),
    "vgg16": (3745, 3489),
    "resnet18": (4447, 4157),
    "resnet50": (8533, 7533),
    "squeezenet1_1": (3687, 2693),
    "shufflenetv2_100": (3915, 3141),
}


def memory_change_percent(model: str) -> float | None:
    """The paper's BN -> MimicNorm training-memory change for `model` in percent (negative: less), if published."""
    if model not in CIFAR100_TRAINING_MEMORY_MB:
        return None
    bn, mimic = CIFAR100_TRAINING_MEMORY_MB[model]
    return 100.0 * (mimic - bn) / bn
