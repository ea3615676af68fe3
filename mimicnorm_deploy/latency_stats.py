"""How sure a latency comparison is: the ratio of two medians with a bootstrap interval.

A benchmark's samples are not independent of the machine's state: a burst of other load slows
every inference timed during it. Engines measured in the same interleaved rounds share those
bursts, so their ratio is resampled *by round* (the same rounds for both, then samples within
each round: a paired cluster bootstrap, Davison & Hinkley 1997, sec. 3.8); engines measured apart
(two machines, two days) are resampled independently. The interval is the percentile interval
of the resampled ratios (Efron & Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000  # enough for a 95 % percentile interval (Efron & Tibshirani 1993, sec. 13.3)
# A ratio whose whole interval lies within 1 +- TOLERANCE is no difference worth reporting:
# a few percent is what a rebuilt engine or a rebooted machine moves on its own.
TOLERANCE = 0.02
_CHUNK_ELEMENTS = 2_000_000  # resampled values held at once


@dataclass(frozen=True)
class Interval:
    """A median with its bootstrap interval."""

    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RatioEstimate:
    """median(a) / median(b) with its bootstrap interval: above 1 means a is slower than b."""

    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE
    tolerance: float = TOLERANCE
    paired: bool = False  # resampled by shared interleaved rounds

    @property
    def verdict(self) -> str:
        return ratio_verdict(self.low, self.high, self.tolerance)

    def describe(self) -> str:
        """E.g. '1.203 [1.188, 1.219]: 20.3 % slower' or '0.998 [0.981, 1.012]: no detectable difference'."""
        text = f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"
        if self.verdict == "no detectable difference":
            return f"{text}: no detectable difference (tolerance {100 * self.tolerance:.0f} %)"
        change = abs(self.value - 1) * 100
        return f"{text}: {change:.1f} % {self.verdict}"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "verdict": self.verdict}


def ratio_verdict(low: float, high: float, tolerance: float = TOLERANCE) -> str:
    """'slower' or 'faster' when the whole interval lies beyond 1 +- tolerance, else 'no detectable
    difference' (the interval spans 1, or what it excludes of 1 is within the tolerance)."""
    if low > 1 + tolerance:
        return "slower"
    if high < 1 / (1 + tolerance):
        return "faster"
    return "no detectable difference"


def median_interval(
    samples: Sequence[float], rounds: Sequence[int] | None = None, *, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """The median of `samples` with its bootstrap interval (resampled by round where given)."""
    values = _as_samples(samples)
    rng = np.random.default_rng(seed)
    chunks = _resample_indices(rng, [values.size], rounds, resamples, _chunk(values.size))[0]
    low, high = _percentile_interval(np.concatenate([np.median(values[idx], axis=1) for idx in chunks]), CONFIDENCE)
    return Interval(float(np.median(values)), low, high)


def ratio_of_medians(
    a: Sequence[float],
    b: Sequence[float],
    *,
    rounds_a: Sequence[int] | None = None,
    rounds_b: Sequence[int] | None = None,
    paired: bool = False,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    tolerance: float = TOLERANCE,
    seed: int = 0,
) -> RatioEstimate:
    """median(a) / median(b) with a `confidence` bootstrap interval.

    With `paired` (a and b timed in the same interleaved session) and per-round sample counts for
    both, the same rounds are drawn for a and b; otherwise each is resampled on its own (within
    its own rounds where given)."""
    values_a, values_b = _as_samples(a), _as_samples(b)
    if paired and (rounds_a is None or rounds_b is None or len(rounds_a) != len(rounds_b)):
        raise ValueError("a paired bootstrap needs both samples' per-round counts, with as many rounds each")
    rng = np.random.default_rng(seed)
    chunk = _chunk(values_a.size, values_b.size)
    if paired:
        chunks_a, chunks_b = _resample_indices(rng, [values_a.size, values_b.size], [rounds_a, rounds_b], resamples,
                                               chunk)  # fmt: skip
    else:
        (chunks_a,) = _resample_indices(rng, [values_a.size], rounds_a, resamples, chunk)
        (chunks_b,) = _resample_indices(rng, [values_b.size], rounds_b, resamples, chunk)
    ratios = np.concatenate([
        np.median(values_a[ia], axis=1) / np.median(values_b[ib], axis=1)
        for ia, ib in zip(chunks_a, chunks_b, strict=True)
    ])  # fmt: skip
    low, high = _percentile_interval(ratios, confidence)
    value = float(np.median(values_a) / np.median(values_b))
    return RatioEstimate(value, low, high, confidence, tolerance=tolerance, paired=paired)


def _as_samples(samples: Sequence[float]) -> np.ndarray:
    values = np.asarray(samples, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"need at least 2 latency samples, got {values.size}")
    if not np.all(np.isfinite(values)) or values.min() <= 0:
        raise ValueError("latency samples must be finite and positive")
    return values


def _chunk(*sizes: int) -> int:
    # Replicates per chunk, the same for every sample set so that their chunks pair up.
    return max(1, _CHUNK_ELEMENTS // max(sizes))


def _percentile_interval(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def _resample_indices(
    rng: np.random.Generator,
    sizes: list[int],
    rounds: Sequence[int] | Sequence[Sequence[int] | None] | None,
    resamples: int,
    chunk: int,
) -> list[list[np.ndarray]]:
    """Bootstrap index arrays, in chunks of replicates, for one sample set or several paired ones.

    Without rounds: indices drawn uniformly. With rounds (a list of per-round counts per set):
    each replicate draws R rounds with replacement, shared by all sets, and slot k of the
    replicate refills its original size from the chosen round's samples.
    """
    per_set_rounds = [rounds] if len(sizes) == 1 else list(rounds)  # type: ignore[arg-type]
    out: list[list[np.ndarray]] = [[] for _ in sizes]
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        num_rounds = len(per_set_rounds[0]) if per_set_rounds[0] is not None else 0
        chosen = rng.integers(0, num_rounds, size=(count, num_rounds), dtype=np.int32) if num_rounds > 1 else None
        for index, (size, set_rounds) in enumerate(zip(sizes, per_set_rounds, strict=True)):
            if chosen is None or set_rounds is None:
                out[index].append(rng.integers(0, size, size=(count, size), dtype=np.int32))
                continue
            counts = np.asarray(set_rounds, dtype=np.int32)
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
            slot = np.repeat(np.arange(len(counts)), counts)  # the round each original position belonged to
            source = chosen[:, slot]  # (count, size): the round each position now draws from
            within = (rng.random((count, size), dtype=np.float32) * counts[source]).astype(np.int32)
            out[index].append(offsets[source] + np.minimum(within, counts[source] - 1))
    return out
