"""The runner interface every backend implements, and batched inference over it."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorMeta:
    """One model input or output. `shape` holds ints for fixed dims and names (e.g. "batch") for
    dynamic ones; `dtype` is a numpy dtype name ("float32", "float16", "int64", ...)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


class Runner(abc.ABC):
    """A loaded engine: feed numpy arrays by input name, get numpy arrays by output name.

    Use it as a context manager so device memory and sessions are released deterministically.
    """

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorMeta]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorMeta]: ...

    @abc.abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one synchronous inference: outputs are complete when this returns."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def memory(self) -> dict[str, int]:
        """Backend memory figures in bytes (engine size, device/arena memory); may be empty."""

    def timing(self) -> dict[str, float] | None:
        """The last inference's split in ms (`gpu_compute_ms`, `h2d_ms`, `d2h_ms`, optionally
        `enqueue_ms`) where the backend can measure it (CUDA events); None where it cannot."""
        return None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_batched(
    runner: Runner,
    images: np.ndarray,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Feed `images` to the first input in batches; return the first output, concatenated.

    Images are cast to the input's dtype. An engine built for a fixed batch size (an int first
    dim) is fed batches of exactly that size: the last one is zero-padded and the padding's
    outputs dropped. `progress(done, total)` is called after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("no images to run")
    first_input = runner.inputs[0]
    output_name = runner.outputs[0].name
    fixed_batch = first_input.shape[0] if first_input.shape and isinstance(first_input.shape[0], int) else None
    step = fixed_batch or batch_size
    total = len(images)
    results = []
    for start in range(0, total, step):
        batch = np.ascontiguousarray(images[start : start + step], dtype=first_input.dtype)
        count = len(batch)
        if fixed_batch is not None and count < fixed_batch:
            batch = np.concatenate([batch, np.zeros((fixed_batch - count, *batch.shape[1:]), batch.dtype)])
        results.append(runner.infer({first_input.name: batch})[output_name][:count])
        if progress is not None:
            progress(start + count, total)
    return np.concatenate(results)
