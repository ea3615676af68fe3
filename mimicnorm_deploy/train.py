"""The trainer: SGD + warm-up + cosine/step schedule, weight centring hook, metrics log,
atomic safetensors checkpoints, and the two training-cost figures of the paper's argument:
activation bytes saved for backward in one step, and mean step time."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.artifacts import atomic_write_text, write_json
from engines.errors import UserError
from mimicnorm_deploy.checkpoint import CheckpointMeta, save_checkpoint
from mimicnorm_deploy.data import Dataset, augment_batch, to_model_input
from mimicnorm_deploy.layers import attach_weight_centring
from mimicnorm_deploy.models import create_model
from mimicnorm_deploy.schemas import TRAIN_REPORT

CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
TRAIN_REPORT_FILE = "train_report.json"


@dataclass
class TrainConfig:
    arch: str = "resnet20"
    norm: str = "mimic"
    epochs: float = 2.0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # The authors warm up over 2 of 150 epochs; short CPU runs warm up over a fraction of one.
    warmup_epochs: float = 0.3
    schedule: str = "cosine"  # or "step": x0.1 at each of `milestones` (epochs)
    milestones: list[float] = field(default_factory=list)
    seed: int = 0
    channels_last: bool = True
    augment: bool = True
    # Cap on steps per epoch (0 = the whole training split); lets tests and quick runs stay short.
    max_steps_per_epoch: int = 0

    def validate(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise UserError("epochs, batch size and learning rate must be positive")
        if self.schedule not in ("cosine", "step"):
            raise UserError(f"unknown schedule {self.schedule!r}; choose cosine or step")


@dataclass
class TrainResult:
    config: dict[str, Any]
    checkpoint: str
    final_test_accuracy: float
    best_test_accuracy: float
    final_train_loss: float
    activation_memory: dict[str, int]
    mean_step_ms: float
    step_ms_percentiles: dict[str, float]  # p10 / p50 / p90 of the timed steps
    epochs: list[dict[str, Any]]


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Per-iteration multiplier: linear warm-up, then cosine to 0 or x0.1 steps at milestones."""
    total = max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    epoch = step / steps_per_epoch
    return 0.1 ** sum(epoch >= m for m in config.milestones)


def activation_bytes_saved_for_backward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    """Bytes of the unique tensors autograd saves for backward in one training step.

    Counted by storage, so views of one buffer count once; parameters are excluded (they exist
    whether or not we train). This is the device-independent part of training memory that
    MimicNorm cuts by dropping BatchNorm2d (each BN saves its input and normalized output).
    A copy of the model is used so the probe does not touch BN running statistics.
    """
    probe = copy.deepcopy(model).train()
    param_storages = {p.untyped_storage().data_ptr() for p in probe.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(probe(images), labels)
    loss.backward()
    return {"batch_size": int(images.shape[0]), "bytes": int(sum(storages.values())), "tensors": len(storages)}


@torch.inference_mode()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` in eval mode on uint8 images."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start : start + batch_size])
        y = torch.as_tensor(labels[start : start + batch_size])
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(images), loss_sum / len(images)


def train(
    config: TrainConfig,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    progress: Callable[[str], None] = print,
) -> TrainResult:
    """Train one model; write checkpoint, metrics log and training report to `out_dir`."""
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    mean, std = dataset.channel_stats()
    meta = CheckpointMeta(
        arch=config.arch, norm=config.norm, num_classes=len(dataset.classes), in_chans=dataset.in_chans,
        image_size=dataset.image_size, input_mean=mean, input_std=std, classes=dataset.classes, dataset=dataset.name,
    )  # fmt: skip
    model = create_model(config.arch, norm=config.norm, num_classes=meta.num_classes, in_chans=meta.in_chans,
                         input_mean=mean, input_std=std)  # fmt: skip
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)  # fmt: skip
    attach_weight_centring(model, optimizer)

    train_images = torch.as_tensor(dataset.train_images)
    train_labels = torch.as_tensor(dataset.train_labels)
    probe_batch = min(config.batch_size, len(train_images))
    activation_memory = activation_bytes_saved_for_backward(
        model, to_model_input(train_images[:probe_batch]), train_labels[:probe_batch]
    )
    progress(f"[{config.norm}] activation memory saved for backward at batch {probe_batch}: "
             f"{activation_memory['bytes'] / 2**20:.1f} MiB")  # fmt: skip

    steps_per_epoch = len(train_images) // config.batch_size or 1
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, config))

    metrics_path = out / METRICS_FILE
    atomic_write_text(metrics_path, "")
    epochs_log: list[dict[str, Any]] = []
    step_times: list[float] = []
    step, epoch = 0, 0
    while step < total_steps:
        epoch += 1
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        loss_sum, correct, seen, epoch_start = 0.0, 0, 0, time.perf_counter()
        for i in range(steps_per_epoch):
            if step >= total_steps:
                break
            index = order[i * config.batch_size : (i + 1) * config.batch_size]
            images = train_images[index]
            if config.augment:
                images = augment_batch(images, generator)
            x, y = to_model_input(images), train_labels[index]
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # The first steps pay for allocator and kernel warm-up; leave them out of the mean.
            if step >= 3:
                step_times.append(time.perf_counter() - t0)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            step += 1
            if (i + 1) % 50 == 0 or i + 1 == steps_per_epoch:
                progress(f"[{config.norm}] epoch {epoch} step {i + 1}/{steps_per_epoch} "
                         f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}%")  # fmt: skip
        test_accuracy, test_loss = evaluate(model, dataset.test_images, dataset.test_labels)
        record = {
            "epoch": epoch, "steps": step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "test_loss": test_loss, "test_accuracy": test_accuracy,
            "epoch_seconds": time.perf_counter() - epoch_start,
        }  # fmt: skip
        epochs_log.append(record)
        with open(metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        progress(f"[{config.norm}] epoch {epoch} done: test accuracy {100 * test_accuracy:.2f}% "
                 f"({record['epoch_seconds']:.0f} s)")  # fmt: skip
        meta.epoch, meta.metrics = epoch, {"test_accuracy": test_accuracy, "test_loss": test_loss}
        save_checkpoint(out / CHECKPOINT_FILE, model, meta)

    result = TrainResult(
        config=asdict(config),
        checkpoint=str(out / CHECKPOINT_FILE),
        final_test_accuracy=epochs_log[-1]["test_accuracy"],
        best_test_accuracy=max(e["test_accuracy"] for e in epochs_log),
        final_train_loss=epochs_log[-1]["train_loss"],
        activation_memory=activation_memory,
        mean_step_ms=1000 * float(np.mean(step_times)) if step_times else float("nan"),
        step_ms_percentiles={f"p{q}": 1000 * float(np.percentile(step_times, q)) for q in (10, 50, 90)}
        if step_times
        else {},
        epochs=epochs_log,
    )
    write_json(out / TRAIN_REPORT_FILE, *TRAIN_REPORT, asdict(result))
    return result
