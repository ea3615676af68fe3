"""Run a torch engine directory on CPU or CUDA, eager, compiled or replaying CUDA graphs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from engines import base
from engines.base import TensorMeta
from engines.errors import UserError
from engines.manifest import REBUILD_HINT, EngineManifest, check_engine
from engines.torch.builder import BACKEND
from engines.torch.device import device_entry, fingerprint, process_device_memory, resolve_device
from engines.torch.model import Forward, GraphedForward, grad_mode, load_frozen, make_forward, read_frozen_meta
from engines.torch.options import Options
from mimicnorm_deploy.training.checkpoint import INPUT_NAME, OUTPUT_NAME


class Runner(base.Runner):
    """Inputs and outputs are float32 whatever the engine's precision: the casts run on the device."""

    def __init__(self, engine_dir: str | os.PathLike):
        self.engine_dir = Path(engine_dir)
        self.manifest = EngineManifest.read_for(self.engine_dir, BACKEND)
        self.options = Options(**self.manifest.backend_options)
        self.device = self._device_here()
        # The engine is weights plus the model's code, which any torch runs: the version is
        # recorded, not enforced as it is for a serialized engine.
        check_engine(self.manifest, self.engine_dir, fingerprint(device_entry(self.device)))
        self.model_path = self.engine_dir / self.manifest.engine_file
        meta = read_frozen_meta(self.model_path)
        self._inputs = [TensorMeta(INPUT_NAME, ("batch", meta.in_chans, meta.image_size, meta.image_size), "float32")]
        self._outputs = [TensorMeta(OUTPUT_NAME, ("batch", meta.num_classes), "float32")]
        self._forward: Forward | None = None
        self._timing: dict[str, float] | None = None

    def _device_here(self) -> torch.device:
        try:
            return resolve_device(self.options.device)
        except UserError:
            raise UserError(
                f"{self.engine_dir}: engine built for {self.manifest.device_fingerprint} ({self.options.device}), "
                f"which this machine does not have: {REBUILD_HINT}"
            ) from None

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._outputs

    def _activate(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._forward = make_forward(load_frozen(self.model_path, self.device, self.options), self.options)

    def _deactivate(self) -> None:
        self._forward = None
        self._timing = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(feeds[self._inputs[0].name]))
        with grad_mode(self.options):
            logits = self._run_cuda(images) if self.device.type == "cuda" else self._forward(images)
        return {self._outputs[0].name: logits.numpy()}

    def _run_cuda(self, images: torch.Tensor) -> torch.Tensor:
        start, copied, computed, done = (torch.cuda.Event(enable_timing=True) for _ in range(4))
        with torch.cuda.device(self.device):
            start.record()
            if isinstance(self._forward, GraphedForward):
                device_images = self._forward.input_buffer(tuple(images.shape), self.device)
                device_images.copy_(images)
            else:
                device_images = images.to(self.device)
            copied.record()
            logits = self._forward(device_images)
            computed.record()
            host_logits = logits.cpu()
            done.record()
        done.synchronize()
        self._timing = {
            "h2d_ms": start.elapsed_time(copied),
            "gpu_compute_ms": copied.elapsed_time(computed),
            "d2h_ms": computed.elapsed_time(done),
        }
        return host_logits

    def timing(self) -> dict[str, float] | None:
        """The last inference's copy-in, compute and copy-out times from CUDA events; None on CPU."""
        return self._timing

    def memory(self) -> dict[str, int]:
        """Model file size; on CUDA also the caching allocator's peaks since activation and this
        process's device memory as the driver reports it (when NVML or nvidia-smi can see it)."""
        figures = {"model_file_bytes": self.model_path.stat().st_size}
        if self.device.type == "cuda":
            figures["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            figures["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
            process_bytes, _source = process_device_memory()
            if process_bytes is not None:
                figures["gpu_process_bytes"] = process_bytes
        return figures
