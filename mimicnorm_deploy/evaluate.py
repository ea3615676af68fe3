"""Accuracy of a built engine on a labelled image set, against a reference's logits. No torch."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from calibration.metrics import accuracy, sqnr_db, top1_agreement
from engines import load_runner
from engines.base import run_batched


@dataclass
class EngineAccuracy:
    images: int
    accuracy: float | None  # None when the image set has no labels
    top1_agreement: float | None  # against the reference logits, when given
    logits_sqnr_db: float | None


def engine_logits(engine_dir: str | os.PathLike, images: np.ndarray,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:  # fmt: skip
    with load_runner(engine_dir) as runner:
        return run_batched(runner, images, batch_size=256, progress=progress)


def score_logits(logits: np.ndarray, labels: np.ndarray | None, reference_logits: np.ndarray | None) -> EngineAccuracy:
    return EngineAccuracy(
        images=len(logits),
        accuracy=accuracy(logits, labels) if labels is not None else None,
        top1_agreement=top1_agreement(reference_logits, logits) if reference_logits is not None else None,
        logits_sqnr_db=sqnr_db(reference_logits, logits) if reference_logits is not None else None,
    )
