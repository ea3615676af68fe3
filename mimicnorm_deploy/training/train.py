"""The trainer: SGD + warm-up + cosine/step schedule, weight centring hook, metrics log,
atomic safetensors checkpoints, and the two training-cost figures of the paper's argument:
activation bytes saved for backward in one step, and mean step time.

Options for the paper's scale: mixed precision (bf16, or fp16 with a grad scaler), gradient
clipping, label smoothing, per-norm parameter groups, data parallelism under torchrun (see
distributed.py), and exact resume: at the end of every epoch the whole training state (model,
optimizer, schedule, scaler, every RNG) is written atomically, and a run resumed from it takes
the same steps, bit for bit, as one that was never interrupted.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.artifacts import atomic_path, atomic_write_text, write_json
from engines.errors import UserError
from engines.schemas import TRAIN_REPORT, TRAIN_STATE
from mimicnorm_deploy.training import distributed
from mimicnorm_deploy.training.checkpoint import CheckpointMeta, save_checkpoint
from mimicnorm_deploy.training.data import Dataset, augment_batch, random_resized_crop_batch, to_model_input
from mimicnorm_deploy.training.layers import attach_weight_centring, param_groups

CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
TRAIN_REPORT_FILE = "train_report.json"
# The resumable state: torch.save of tensors and plain Python values only, read back with
# torch.load(weights_only=True), which refuses anything else (no code runs on load).
TRAIN_STATE_FILE = "train_state.pt"

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    arch: str = "resnet20"
    norm: str = "mimic"
    stem: str = "cifar"  # "imagenet": a downsampling stem, for larger inputs (see models/registry.py)
    epochs: float = 2.0
    # The global batch: under torchrun each of the N processes trains on batch_size / N of it.
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
    augment_pad: int = 2  # random-crop padding in pixels; 4 is the usual for CIFAR
    # "crop-flip" (CIFAR-style: padded random crop + flip) or "resized-crop" (ImageNet-style:
    # random-resized crop + flip, for ImageNet-stem models on large images).
    augment_style: str = "crop-flip"
    # Cap on steps per epoch (0 = the whole training split); lets tests and quick runs stay short.
    max_steps_per_epoch: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto" (CUDA when present); under torchrun, one GPU per local rank
    amp: str = "off"  # "bf16" or "fp16" autocast; fp16 adds a grad scaler and needs CUDA
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    label_smoothing: float = 0.0
    sync_bn: str = "off"  # under torchrun on GPUs: "logits" (MimicNorm's last BN) or "all" BNs synchronized

    def validate(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise UserError("epochs, batch size and learning rate must be positive")
        if self.schedule not in ("cosine", "step"):
            raise UserError(f"unknown schedule {self.schedule!r}; choose cosine or step")
        if self.amp not in AMP_DTYPES:
            raise UserError(f"unknown amp mode {self.amp!r}; choose one of: {', '.join(AMP_DTYPES)}")
        if self.device not in distributed.DEVICES:
            raise UserError(f"unknown device {self.device!r}; choose one of: {', '.join(distributed.DEVICES)}")
        if self.sync_bn not in distributed.SYNC_BN:
            raise UserError(f"unknown sync-bn mode {self.sync_bn!r}; choose one of: {', '.join(distributed.SYNC_BN)}")
        if self.augment_style not in ("crop-flip", "resized-crop"):
            raise UserError(f"unknown augmentation {self.augment_style!r}; choose crop-flip or resized-crop")
        if self.augment_pad < 0:
            raise UserError(f"augmentation padding must be >= 0, got {self.augment_pad}")
        if self.grad_clip < 0:
            raise UserError(f"gradient clipping norm must be >= 0 (0 = off), got {self.grad_clip}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")


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
    world_size: int = 1
    resumed_from_epoch: int | None = None


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """The autocast context of an amp mode ("off": a disabled one)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp], enabled=amp != "off")


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


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` in eval mode on uint8 images, on the model's device."""
    correct, loss_sum = _evaluation_sums(model, images, labels, batch_size)
    return correct / len(images), loss_sum / len(images)


@torch.inference_mode()
def _evaluation_sums(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[int, float]:
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start : start + batch_size]).to(device)
        y = torch.as_tensor(labels[start : start + batch_size]).to(device)
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return correct, loss_sum


class Trainer:
    """One training run: model, optimizer, schedule, scaler, data order, and their saved state.

    `train()` is the usual entry point; the class is for callers that need the live model (e.g.
    the multi-process test compares it across ranks). Under torchrun, `self.model` is the bare
    module and `self.net` its DistributedDataParallel wrapper; only rank 0 writes files or reports
    progress.
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        out_dir: str | os.PathLike,
        progress: Callable[[str], None] = print,
        *,
        resume_from: str | os.PathLike | None = None,
    ) -> None:
        config.validate()
        state_path = train_state_path(resume_from) if resume_from is not None else None  # fail before any work
        self.config, self.dataset, self.out = config, dataset, Path(out_dir)
        self._join_processes(progress)
        torch.manual_seed(config.seed)
        # Data order and augmentation draw from their own generator, the same on every rank.
        self.generator = torch.Generator().manual_seed(config.seed)
        model = self._build_model()
        self.train_images = torch.as_tensor(dataset.train_images)
        self.train_labels = torch.as_tensor(dataset.train_labels)
        self.activation_memory = self._activation_memory(model)
        self._set_up_optimizer(model)
        self._set_up_schedule()
        self.step, self.epoch, self.resumed_from_epoch = 0, 0, None
        self.epochs_log: list[dict[str, Any]] = []
        self.step_times: list[float] = []
        if state_path is not None:
            self.load_state(state_path)
        if self.context.is_main:
            # Resumed: the log up to the saved epoch (an epoch logged after the last state save is redone).
            atomic_write_text(self.out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.epochs_log))

    def _join_processes(self, progress: Callable[[str], None]) -> None:
        """This process's place in the run (torchrun or alone) and device; only rank 0 reports and writes."""
        config = self.config
        self.context = distributed.setup(config.device)
        self.device = self.context.device
        if config.amp == "fp16" and self.device.type != "cuda":
            raise UserError("fp16 mixed precision needs a CUDA device; use --amp bf16 on CPU, or --amp off")
        if config.batch_size % self.context.world_size:
            raise UserError(f"batch size {config.batch_size} does not split over {self.context.world_size} processes")
        self.progress = progress if self.context.is_main else lambda _: None
        if self.context.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    def _build_model(self) -> nn.Module:
        """The model the checkpoint metadata describes (self.meta), on the device, in the memory format asked for."""
        config, dataset = self.config, self.dataset
        mean, std = dataset.channel_stats()
        self.meta = CheckpointMeta(
            arch=config.arch, norm=config.norm, num_classes=len(dataset.classes), in_chans=dataset.in_chans,
            image_size=dataset.image_size, input_mean=mean, input_std=std, classes=dataset.classes,
            dataset=dataset.name, stem=config.stem,
        )  # fmt: skip
        model = self.meta.build_model().to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _activation_memory(self, model: nn.Module) -> dict[str, int]:
        """What one of this run's steps saves for backward, in its precision (reported once)."""
        config = self.config
        probe_batch = min(config.batch_size // self.context.world_size, len(self.train_images))
        with autocast(self.device, config.amp):
            memory = activation_bytes_saved_for_backward(
                model, to_model_input(self.train_images[:probe_batch]).to(self.device),
                self.train_labels[:probe_batch].to(self.device),
            )  # fmt: skip
        self.progress(f"[{config.norm}] activation memory saved for backward at batch {probe_batch}: "
                      f"{memory['bytes'] / 2**20:.1f} MiB")  # fmt: skip
        return memory

    def _set_up_optimizer(self, model: nn.Module) -> None:
        """self.model (sync BN as asked), its optimizer with weight centring, self.net and the grad scaler."""
        config = self.config
        self.model = distributed.convert_sync_batchnorm(model, config.sync_bn, self.context)
        self.optimizer = torch.optim.SGD(param_groups(self.model, config.norm, config.lr, config.weight_decay),
                                         lr=config.lr, momentum=config.momentum)  # fmt: skip
        # A step hook: it runs only when the optimizer really steps, so a step the fp16 scaler
        # skips (inf/nan gradients) leaves the weights exactly as they were.
        attach_weight_centring(self.model, self.optimizer)
        self.net = distributed.wrap(self.model, self.context)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")

    def _set_up_schedule(self) -> None:
        """Steps per epoch, total steps, and the learning-rate schedule over them."""
        config = self.config
        self.steps_per_epoch = len(self.train_images) // config.batch_size or 1
        if config.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.max_steps_per_epoch)
        self.total_steps = max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.steps_per_epoch, config)
        )

    def fit(self) -> TrainResult:
        while self.step < self.total_steps:
            self._run_epoch()
        step_times = self.step_times
        result = TrainResult(
            config=asdict(self.config),
            checkpoint=str(self.out / CHECKPOINT_FILE),
            final_test_accuracy=self.epochs_log[-1]["test_accuracy"],
            best_test_accuracy=max(e["test_accuracy"] for e in self.epochs_log),
            final_train_loss=self.epochs_log[-1]["train_loss"],
            activation_memory=self.activation_memory,
            mean_step_ms=1000 * float(np.mean(step_times)) if step_times else float("nan"),
            step_ms_percentiles={f"p{q}": 1000 * float(np.percentile(step_times, q)) for q in (10, 50, 90)}
            if step_times
            else {},
            epochs=self.epochs_log,
            world_size=self.context.world_size,
            resumed_from_epoch=self.resumed_from_epoch,
        )
        if self.context.is_main:
            write_json(self.out / TRAIN_REPORT_FILE, *TRAIN_REPORT, asdict(result))
        return result

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, (clip,) optimizer and schedule step; returns the detached loss and logits."""
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, config.amp):
            logits = self.net(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        self.scaler.scale(loss).backward()
        if config.grad_clip > 0:
            # Clip the true gradients, not the fp16-scaled ones (a no-op without a scaler).
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), logits.detach()

    def _run_epoch(self) -> None:
        config, context = self.config, self.context
        self.epoch += 1
        self.net.train()
        order = torch.randperm(len(self.train_images), generator=self.generator)
        loss_sum, correct, seen, epoch_start = 0.0, 0, 0, time.perf_counter()
        for i in range(self.steps_per_epoch):
            if self.step >= self.total_steps:
                break
            index = order[i * config.batch_size : (i + 1) * config.batch_size]
            images = self.train_images[index]
            if config.augment:
                # The whole global batch on every rank, so the generator advances alike everywhere.
                images = (augment_batch(images, self.generator, pad=config.augment_pad)
                          if config.augment_style == "crop-flip"
                          else random_resized_crop_batch(images, self.generator))  # fmt: skip
            x = to_model_input(distributed.shard(images, context)).to(self.device)
            y = distributed.shard(self.train_labels[index], context).to(self.device)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            loss, logits = self.train_step(x, y)
            loss_value = loss.item()  # waits for the device, so the time below is the step's own
            # The first steps pay for allocator and kernel warm-up; leave them out of the mean.
            if self.step >= 3:
                self.step_times.append(time.perf_counter() - t0)
            loss_sum += loss_value * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            self.step += 1
            if (i + 1) % 50 == 0 or i + 1 == self.steps_per_epoch:
                self.progress(f"[{config.norm}] epoch {self.epoch} step {i + 1}/{self.steps_per_epoch} "
                              f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}%")  # fmt: skip
        loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen], context)
        distributed.broadcast_buffers(self.model, context)
        test_accuracy, test_loss = self._evaluate()
        record = {
            "epoch": self.epoch, "steps": self.step, "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "test_loss": test_loss, "test_accuracy": test_accuracy,
            "epoch_seconds": time.perf_counter() - epoch_start,
        }  # fmt: skip
        self.epochs_log.append(record)
        if context.is_main:
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            self.meta.epoch, self.meta.metrics = self.epoch, {"test_accuracy": test_accuracy, "test_loss": test_loss}
            save_checkpoint(self.out / CHECKPOINT_FILE, self.model, self.meta)
            self.save_state(self.out / TRAIN_STATE_FILE)
        self.progress(f"[{config.norm}] epoch {self.epoch} done: test accuracy {100 * test_accuracy:.2f}% "
                      f"({record['epoch_seconds']:.0f} s)")  # fmt: skip

    def _evaluate(self) -> tuple[float, float]:
        """Test accuracy and loss; under torchrun each rank evaluates every world_size-th image."""
        images, labels = self.dataset.test_images, self.dataset.test_labels
        step = self.context.world_size
        correct, loss_sum = _evaluation_sums(self.model, images[self.context.rank :: step],
                                             labels[self.context.rank :: step], 500)  # fmt: skip
        correct, loss_sum = distributed.all_reduce_sum([correct, loss_sum], self.context)
        return correct / len(images), loss_sum / len(images)

    # --- exact resume -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the run depends on, as tensors and plain Python values."""
        _, key, pos, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "version": TRAIN_STATE[1],
            "config": asdict(self.config),
            "dataset": _dataset_signature(self.dataset),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "numpy": [torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
                "python": random.getstate(),
                "data_order": self.generator.get_state(),
            },
            "epochs_log": self.epochs_log,
            "step_times": self.step_times,
        }

    def save_state(self, path: str | os.PathLike) -> Path:
        """Write the resumable state atomically: a kill mid-write leaves the previous state intact."""
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return Path(path)

    def load_state(self, path: str | os.PathLike) -> None:
        """Continue from a state written by `save_state` (a file, or the run directory holding it)."""
        p = train_state_path(path)
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling a damaged or foreign file fails in many ways
            raise UserError(f"{p}: not a readable training state ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or state.get("version") != TRAIN_STATE[1]:
            raise UserError(f"{p}: training state from another version of this tool; start a new run")
        ours = asdict(self.config)
        changed = sorted(k for k in ours.keys() | state["config"].keys() if ours.get(k) != state["config"].get(k))
        if changed:
            raise UserError(f"{p}: options differ from the interrupted run's ({', '.join(changed)}); use the same")
        if state["dataset"] != _dataset_signature(self.dataset):
            raise UserError(f"{p}: the interrupted run trained on {state['dataset']}; resume with the same data")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        key, pos, has_gauss, cached_gaussian = rng["numpy"]
        np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
        random.setstate(rng["python"])
        self.generator.set_state(rng["data_order"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.epochs_log, self.step_times = state["epochs_log"], state["step_times"]
        self.resumed_from_epoch = self.epoch
        self.progress(f"[{self.config.norm}] resumed from {p} at epoch {self.epoch} (step {self.step})")


def _dataset_signature(dataset: Dataset) -> dict[str, Any]:
    return {"name": dataset.name, "train": len(dataset.train_images), "test": len(dataset.test_images),
            "classes": len(dataset.classes)}  # fmt: skip


def train_state_path(path: str | os.PathLike) -> Path:
    """The training-state file of a run directory (or the file itself); UserError if there is none."""
    p = Path(path)
    if p.is_dir():
        p = p / TRAIN_STATE_FILE
    if not p.is_file():
        raise UserError(f"{p}: no training state to resume from; it is written at the end of each epoch")
    return p


def train(
    config: TrainConfig,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    progress: Callable[[str], None] = print,
    *,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train one model; write checkpoint, metrics log, training state and report to `out_dir`.

    `resume_from` (a run directory or its train_state.pt) continues an interrupted run exactly.
    """
    return Trainer(config, dataset, out_dir, progress, resume_from=resume_from).fit()
