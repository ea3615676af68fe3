"""Calibration data readers: feed model inputs to ONNX Runtime's calibrators batch by batch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

# progress(done, total): batches run so far, and batches in all.
ProgressCallback = Callable[[int, int], None]


class ArrayCalibrationReader(CalibrationDataReader):
    """Serve a float32 N x C x H x W array as `{input_name: batch}` feeds, `batch_size` images at a time.

    The last batch holds the remainder when N is not a multiple of `batch_size`, so every image is
    used. `progress(done, total)` is called once per batch, when that batch has been run; calibration
    runs the whole model on every batch, which takes minutes on real sets.
    """

    def __init__(
        self,
        images: np.ndarray,
        input_name: str,
        batch_size: int,
        progress: ProgressCallback | None = None,
    ) -> None:
        if images.ndim != 4 or images.dtype != np.float32:
            raise ValueError(f"images must be float32 N x C x H x W, got {images.dtype} {images.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        # One copy up front if needed, so ORT is handed C-contiguous batches (views) on every run.
        self.images = np.ascontiguousarray(images)
        self.input_name = input_name
        self.batch_size = batch_size
        self.progress = progress
        self.num_batches = -(-len(images) // batch_size)
        self._next_batch = 0
        self._exhausted = False

    def get_next(self) -> dict[str, np.ndarray] | None:
        # The calibrator asks for batch k only after running batch k-1, so that is the moment to
        # report k batches done; the final None means the last batch has run.
        batches_done = self._next_batch
        if self.progress is not None and batches_done > 0 and not self._exhausted:
            self.progress(batches_done, self.num_batches)
        if batches_done >= self.num_batches:
            self._exhausted = True
            return None
        start = batches_done * self.batch_size
        self._next_batch += 1
        return {self.input_name: self.images[start : start + self.batch_size]}

    def __len__(self) -> int:
        return self.num_batches
