"""Training memory, measured: the paper's headline claim (MimicNorm needs less memory to train
than its BN twin) as numbers for one model, batch and input size.

Device-independent figures first: the bytes autograd saves for backward in one step (what
dropping BatchNorm2d cuts), and the parameter, gradient, optimizer-state (SGD momentum) and
buffer bytes (nearly equal between the twins). Under autocast the saved bytes include the
low-precision copies of the weights that autocast makes and autograd keeps.

On CUDA also `torch.cuda.max_memory_allocated` over one steady-state training step (after a
first step has created gradients and momentum), the allocator's reserved peak (closer to the
nvidia-smi figures the authors report, which also include the CUDA context), and the step time
from CUDA events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.errors import UserError
from mimicnorm_deploy.training.distributed import resolve_device
from mimicnorm_deploy.training.layers import attach_weight_centring, param_groups
from mimicnorm_deploy.training.models import create_model
from mimicnorm_deploy.training.train import AMP_DTYPES, activation_bytes_saved_for_backward, autocast

# Keys of `profile_memory`'s result that `compare_memory` takes ratios of.
RATIO_KEYS = (
    "activation_bytes", "parameter_bytes", "gradient_bytes", "optimizer_state_bytes", "buffer_bytes",
    "training_bytes", "cuda_peak_allocated_bytes", "cuda_peak_reserved_bytes", "step_ms_p50",
)  # fmt: skip


def _nbytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def profile_memory(
    arch: str,
    norm: str,
    batch_size: int,
    input_size: int,
    in_chans: int = 3,
    num_classes: int = 10,
    device: str = "cpu",
    *,
    stem: str = "cifar",
    amp: str = "off",
    channels_last: bool = True,
    timed_steps: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Memory (and, on CUDA, time) of one SGD training step of `arch` under `norm` on random inputs."""
    target = _checked_device(batch_size, input_size, amp, device)
    torch.manual_seed(seed)
    model = create_model(arch, norm=norm, num_classes=num_classes, in_chans=in_chans, stem=stem).to(target)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images = torch.rand(batch_size, in_chans, input_size, input_size, device=target)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), device=target)
    with autocast(target, amp):
        activation = activation_bytes_saved_for_backward(model, images, labels)
    step, optimizer = _training_step(model, images, labels, norm, target, amp)
    step()  # creates the gradients and momentum buffers that every later step keeps
    result: dict[str, Any] = {
        "arch": arch, "norm": norm, "batch_size": batch_size, "input_size": input_size, "in_chans": in_chans,
        "num_classes": num_classes, "stem": stem, "amp": amp, "device": str(target),
        **_step_memory(model, optimizer, activation),
    }  # fmt: skip
    if target.type == "cuda":
        result.update(_cuda_step_figures(step, target, timed_steps))
    return result


def _checked_device(batch_size: int, input_size: int, amp: str, device: str) -> torch.device:
    """The device to profile on, once the request makes sense."""
    if batch_size <= 0 or input_size <= 0:
        raise UserError("batch size and input size must be positive")
    if amp not in AMP_DTYPES:
        raise UserError(f"unknown amp mode {amp!r}; choose one of: {', '.join(AMP_DTYPES)}")
    target = resolve_device(device)
    if amp == "fp16" and target.type != "cuda":
        raise UserError("fp16 mixed precision needs a CUDA device; use amp bf16 or off on CPU")
    return target


def _training_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: str, target: torch.device, amp: str
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """The trainer's step on this batch (SGD with weight centring; fp16 scales the loss and
    unscales the gradients, a no-op otherwise), and its optimizer."""
    optimizer = torch.optim.SGD(param_groups(model, norm, 0.1, 5e-4), lr=0.1, momentum=0.9)
    attach_weight_centring(model, optimizer)
    scaler = torch.amp.GradScaler(target.type, enabled=amp == "fp16")
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(target, amp):
            loss = nn.functional.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, optimizer


def _step_memory(model: nn.Module, optimizer: torch.optim.Optimizer, activation: dict[str, int]) -> dict[str, int]:
    """Bytes a training step holds, by kind, after one step; `training_bytes` is what it needs at
    its peak, to first order, without allocator or workspace overheads."""
    params = list(model.parameters())
    memory = {
        "activation_bytes": activation["bytes"], "activation_tensors": activation["tensors"],
        "parameters": int(sum(p.numel() for p in params)),
        "parameter_bytes": _nbytes(params),
        "gradient_bytes": _nbytes(p.grad for p in params if p.grad is not None),
        "optimizer_state_bytes": _nbytes(
            t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)
        ),
        "buffer_bytes": _nbytes(model.buffers()),
    }  # fmt: skip
    memory["training_bytes"] = sum(memory[k] for k in (
        "activation_bytes", "parameter_bytes", "gradient_bytes", "optimizer_state_bytes", "buffer_bytes"))  # fmt: skip
    return memory


def _cuda_step_figures(step, device: torch.device, timed_steps: int) -> dict[str, Any]:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    steady = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    figures: dict[str, Any] = {
        "cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
        "cuda_peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
        # Above what persists between steps (weights, gradients, momentum): activations and workspaces.
        "cuda_step_transient_bytes": torch.cuda.max_memory_allocated(device) - steady,
        "device_name": torch.cuda.get_device_name(device),
    }
    for _ in range(3):  # cuDNN algorithm selection and allocator warm-up
        step()
    times = []
    for _ in range(max(1, timed_steps)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    figures.update({f"step_ms_p{q}": float(np.percentile(times, q)) for q in (10, 50, 90)})
    figures["timed_steps"] = len(times)
    return figures


def compare_memory(
    arch: str,
    batch_size: int,
    input_size: int,
    in_chans: int = 3,
    num_classes: int = 10,
    device: str = "cpu",
    *,
    norms: tuple[str, str] = ("mimic", "bn"),
    **options: Any,
) -> dict[str, Any]:
    """`profile_memory` for two norms (MimicNorm and its BN twin by default) and their ratios."""
    profiles = {
        norm: profile_memory(arch, norm, batch_size, input_size, in_chans, num_classes, device, **options)
        for norm in norms
    }
    first, second = (profiles[n] for n in norms)
    ratios = {k: first[k] / second[k] for k in RATIO_KEYS if k in first and k in second and second[k]}
    return {"arch": arch, "batch_size": batch_size, "input_size": input_size, "device": first["device"],
            "ratio_of": f"{norms[0]}/{norms[1]}", "norms": profiles, "ratios": ratios}  # fmt: skip
