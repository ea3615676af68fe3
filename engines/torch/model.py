"""The frozen model as a torch callable: loaded from safetensors, cast, laid out and wrapped for one
of the backend's modes.

A PyTorch model is its Python code plus its weights, so this backend rebuilds the frozen twin from
the project's model definitions (mimicnorm_deploy/training/, the other folder allowed to import
torch) and loads the weights from the safetensors file; nothing is unpickled. engines/torch/ is
the one place `engines` reaches into that folder, and it is imported only when the torch backend
is chosen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
from torch import nn

from engines.errors import UserError
from engines.torch.options import Options
from mimicnorm_deploy.training.checkpoint import CheckpointMeta, load_checkpoint, read_checkpoint_meta

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Runs before a graph is captured: cuDNN picks its algorithms and the allocator settles on them.
GRAPH_WARMUP_RUNS = 3

Forward = Callable[[torch.Tensor], torch.Tensor]


def read_frozen_meta(path: str | os.PathLike) -> CheckpointMeta:
    """The checkpoint metadata of a frozen model (`freeze`'s output); a one-line error for anything else."""
    meta = read_checkpoint_meta(path)
    if meta.frozen_from is None:
        raise UserError(f"{path}: a trained checkpoint, not a frozen one; run 'mimicnorm-deploy freeze' on it first")
    return meta


def load_frozen(path: str | os.PathLike, device: torch.device, options: Options) -> nn.Module:
    """The frozen model on `device`, in eval mode, cast to the options' precision and layout."""
    model, _ = load_checkpoint(path)
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    return model.to(device=device, dtype=TORCH_DTYPES[options.precision], memory_format=memory_format).eval()


def grad_mode(options: Options) -> contextlib.AbstractContextManager:
    """The autograd mode inferences run under (and a compiled module is specialised to).

    Inference mode skips autograd's version counters (less overhead per op); a CUDA graph's static
    buffers are captured under no_grad, because tensors made in inference mode cannot be written
    outside it.
    """
    return torch.no_grad() if options.mode == "cuda-graph" else torch.inference_mode()


def make_forward(model: nn.Module, options: Options) -> Forward:
    """float32 images on the model's device -> float32 logits there, in the options' mode.

    The casts to and from the model's precision are part of the forward (and of a captured graph),
    so every precision takes and returns the same float32 tensors.
    """
    dtype = TORCH_DTYPES[options.precision]
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model(images.to(dtype=dtype, memory_format=memory_format)).float()

    if options.mode == "eager":
        return forward
    if options.mode == "compile":
        # dynamic=False: kernels specialised to each batch size, as an engine built per shape would be.
        return torch.compile(forward, dynamic=False)
    return GraphedForward(forward)


class GraphedForward:
    """Replays one CUDA graph per input shape, captured on that shape's first call.

    A graph reads from and writes to fixed device buffers: `input_buffer(shape)` is where the
    caller copies its images, and the returned logits are overwritten by the next replay.
    """

    def __init__(self, forward: Forward):
        self._forward = forward
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def input_buffer(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return self._entry(shape, device)[1]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        graph, static_input, static_output = self._entry(tuple(images.shape), images.device)
        if images.data_ptr() != static_input.data_ptr():
            static_input.copy_(images)
        graph.replay()
        return static_output

    def _entry(self, shape: tuple[int, ...], device: torch.device):
        if shape not in self._graphs:
            self._graphs[shape] = self._capture(shape, device)
        return self._graphs[shape]

    def _capture(self, shape: tuple[int, ...], device: torch.device):
        static_input = torch.zeros(shape, dtype=torch.float32, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_RUNS):
                self._forward(static_input)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = self._forward(static_input)
        return graph, static_input, static_output
