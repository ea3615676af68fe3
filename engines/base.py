"""The runner interface every backend implements, the shared check of feeds, and batched
inference over a runner.

A runner's lifecycle follows Polygraphy's: construct (read and check the engine directory,
cheap), `activate()` (allocate sessions, contexts, buffers), `infer()` any number of times,
`deactivate()` (release them). As a context manager it activates on entry and deactivates on
exit. `infer` is concrete here: it checks the feeds against the engine's inputs, then calls the
backend's `_infer`, so every backend refuses bad feeds with the same one-line error.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engines.errors import UserError


@dataclass(frozen=True)
class TensorMeta:
    """One model input or output. `shape` holds ints for fixed dims and names (e.g. "batch") for
    dynamic ones; `dtype` is a numpy dtype name ("float32", "float16", "int64", ...).

    `min_shape`/`max_shape` bound the dynamic dims where the engine has bounds (a TensorRT
    optimization profile); None where any size goes."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None


def check_feeds(inputs: list[TensorMeta], feeds: dict[str, np.ndarray]) -> None:
    """Raise a one-line UserError unless `feeds` has exactly the engine's inputs, each with its
    dtype, rank, fixed dims and (where the engine has them) dims within its bounds."""
    expected = {meta.name for meta in inputs}
    if set(feeds) != expected:
        missing, unexpected = sorted(expected - set(feeds)), sorted(set(feeds) - expected)
        raise UserError(
            f"feeds {sorted(feeds)} do not match the engine's inputs {sorted(expected)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {unexpected})" if unexpected else "")
            + "; feed every input by name"
        )
    for meta in inputs:
        array = feeds[meta.name]
        if not isinstance(array, np.ndarray) or array.dtype != np.dtype(meta.dtype):
            found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise UserError(f"input {meta.name!r} is {found}, the engine takes {meta.dtype}; cast it first")
        if array.ndim != len(meta.shape) or any(
            isinstance(dim, int) and size != dim for size, dim in zip(array.shape, meta.shape, strict=True)
        ):
            raise UserError(
                f"input {meta.name!r} has shape {tuple(array.shape)}, the engine takes {meta.shape}; "
                "reshape it (named dims may take any size)"
            )
        if meta.min_shape is not None and meta.max_shape is not None and not all(
            low <= size <= high for size, low, high in zip(array.shape, meta.min_shape, meta.max_shape, strict=True)
        ):
            raise UserError(
                f"input {meta.name!r} has shape {tuple(array.shape)}, outside the engine's bounds "
                f"{meta.min_shape}..{meta.max_shape}; feed a shape in range or rebuild with wider bounds"
            )


class Runner(abc.ABC):
    """A loaded engine: feed numpy arrays by input name, get numpy arrays by output name.

    Subclasses are constructed as `Runner(engine_dir)` and implement `_activate`, `_deactivate`,
    `_infer`, `inputs`, `outputs` and `memory`, and `timing` where they can measure it; the base
    class keeps `is_active` and checks feeds.
    """

    _active: bool = False

    @abc.abstractmethod
    def _activate(self) -> None:
        """Allocate what inference needs (session, execution context, buffers)."""

    @abc.abstractmethod
    def _deactivate(self) -> None:
        """Release what `_activate` allocated."""

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one synchronous inference on checked feeds: outputs are complete when it returns."""

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorMeta]:
        """The engine's inputs; available while active."""

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorMeta]:
        """The engine's outputs; available while active."""

    @abc.abstractmethod
    def memory(self) -> dict[str, int]:
        """Backend memory figures in bytes (engine size, device/arena memory); may be empty."""

    def timing(self) -> dict[str, float] | None:
        """The last inference's split in ms (`gpu_compute_ms`, `h2d_ms`, `d2h_ms`, optionally
        `enqueue_ms`) where the backend can measure it (CUDA events); None where it cannot."""
        return None

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> None:
        if self._active:
            raise RuntimeError(f"{type(self).__name__} is already active")
        self._activate()
        self._active = True

    def deactivate(self) -> None:
        if not self._active:
            raise RuntimeError(f"{type(self).__name__} is not active")
        self._active = False
        self._deactivate()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feeds` against the engine's inputs (one-line UserError), then run one
        synchronous inference."""
        if not self._active:
            raise RuntimeError(f"{type(self).__name__} is not active; use it as a context manager or activate() it")
        check_feeds(self.inputs, feeds)
        return self._infer(feeds)

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()


def run_batched(
    runner: Runner,
    images: np.ndarray,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Feed `images` to the first input in batches; return the first output, concatenated.

    Images are cast to the input's dtype. An engine built for a fixed batch size (an int first
    dim) is fed batches of exactly that size, one with batch bounds (a TensorRT profile) batches
    within them: a short last batch is zero-padded and the padding's outputs dropped.
    `progress(done, total)` is called after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("no images to run")
    first_input = runner.inputs[0]
    output_name = runner.outputs[0].name
    fixed_batch = first_input.shape[0] if first_input.shape and isinstance(first_input.shape[0], int) else None
    # A TensorRT optimization profile bounds the batch: never feed more than its max, pad up to its min.
    largest = first_input.max_shape[0] if first_input.max_shape else batch_size
    smallest = fixed_batch or (first_input.min_shape[0] if first_input.min_shape else 1)
    step = fixed_batch or min(batch_size, largest)
    total = len(images)
    results = []
    for start in range(0, total, step):
        batch = np.ascontiguousarray(images[start : start + step], dtype=first_input.dtype)
        count = len(batch)
        if count < smallest:
            batch = np.concatenate([batch, np.zeros((smallest - count, *batch.shape[1:]), batch.dtype)])
        results.append(runner.infer({first_input.name: batch})[output_name][:count])
        if progress is not None:
            progress(start + count, total)
    return np.concatenate(results)
