"""Data-parallel training under `torchrun`: process group, device, sharding, and rank-0-only output.

Launch any training entry point through torchrun (e.g. `torchrun --nproc_per_node 4 -m
mimicnorm_deploy train ...`); the trainer sees torchrun's environment (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins the group itself: NCCL on GPUs, gloo on CPU.
Without torchrun everything here reduces to a single process and no collective is called.

Every rank builds the same model from the same seed and draws the same data order from the
same generator; DDP averages the gradients, so every rank takes the same optimizer step and the
MimicNorm weight centring (an optimizer step hook, a deterministic function of the weights)
gives the same weights on every rank. Each step's global batch is the single-process batch:
rank r trains on its rows r, r + world, ... (DistributedSampler's interleaving, per batch), so
`batch_size` is global and the learning-rate recipe does not depend on the number of processes.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from engines.errors import UserError

DEVICES = ("cpu", "cuda", "auto")
SYNC_BN = ("off", "logits", "all")


@dataclass(frozen=True)
class DistContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Rank 0, or not launched by torchrun. From the environment, so it holds after the group is gone."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but PyTorch sees no CUDA device; pass --device cpu or auto")
    if local_rank >= torch.cuda.device_count():
        raise UserError(
            f"local rank {local_rank} but only {torch.cuda.device_count()} CUDA devices; lower --nproc_per_node"
        )
    return torch.device("cuda", local_rank)


def setup(device: str) -> DistContext:
    """Join torchrun's process group if launched by it (one GPU per local rank), else run alone.

    The group is created once per process and kept until exit: the demo trains two models in one
    process, and a group cannot be re-created under torchrun's rendezvous once destroyed.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(resolve_device(device))
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    except KeyError as exc:
        raise UserError(f"WORLD_SIZE is set but {exc.args[0]} is not; launch through torchrun") from None
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
        atexit.register(_destroy_group)
    return DistContext(target, rank, world_size)


def _destroy_group() -> None:
    # NCCL warns at exit about a group left alive; the caller may also have destroyed it already.
    if dist.is_initialized():
        dist.destroy_process_group()


def convert_sync_batchnorm(model: nn.Module, which: str, context: DistContext) -> nn.Module:
    """Make the logits BN (`which="logits"`) or every BN (`"all"`) a SyncBatchNorm.

    MimicNorm's one BN normalizes the logits over the batch; under DDP each rank would see only its
    shard. SyncBatchNorm computes the statistics over the global batch instead. PyTorch implements
    it for GPUs only. Parameters and buffers keep their names, so checkpoints load into plain BN.
    """
    if which not in SYNC_BN:
        raise UserError(f"unknown sync-bn mode {which!r}; choose one of: {', '.join(SYNC_BN)}")
    if which == "off" or not context.distributed:
        return model
    if context.device.type != "cuda":
        raise UserError("SyncBatchNorm needs CUDA devices (PyTorch has no CPU implementation); drop --sync-bn")
    if which == "all":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not isinstance(getattr(model, "logits_norm", None), nn.modules.batchnorm._BatchNorm):
        raise UserError(f"{model.norm_spec.name} models have no BN on the logits; use --sync-bn all or off")
    model.logits_norm = nn.SyncBatchNorm.convert_sync_batchnorm(model.logits_norm)
    return model


def wrap(model: nn.Module, context: DistContext) -> nn.Module:
    """DistributedDataParallel around `model` when there are several processes, else `model`."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shard(batch: torch.Tensor, context: DistContext) -> torch.Tensor:
    """This rank's rows of a global batch (every rank gets batch_size / world_size of them)."""
    return batch[context.rank :: context.world_size] if context.distributed else batch


def all_reduce_sum(values: list[float], context: DistContext) -> list[float]:
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def broadcast_buffers(model: nn.Module, context: DistContext) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank.

    DDP broadcasts them at the start of each forward, but each rank then updates them from its
    own shard; before evaluating or saving, rank 0's are made everyone's, so all ranks agree.
    """
    if context.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
