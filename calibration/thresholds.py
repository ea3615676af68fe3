"""Activation range (amax) selection from a histogram of |x|: MinMax, Percentile, MSE and Entropy.

Pure numpy on an `AbsHistogram`: counts of |x| in equal bins over [0, max |x|], 2048 bins as
TensorRT uses. Symmetric INT8 then maps [-amax, amax] onto [-127, 127] (scale amax / 127).

- Percentile: the right edge of the bin where the given percentile of |x| falls.
- MSE: the threshold minimising the quantization mean squared error of the histogram (bin
  centres fake-quantized, as NVIDIA's pytorch-quantization computes it).
- Entropy: TensorRT's EntropyCalibration2 (Migacz, "8-bit inference with TensorRT", GTC 2017):
  for every candidate of i bins, i = 128 .. 2048, the reference P is the first i bins with the
  outliers added to the last one, the candidate Q is those i bins merged into 128 levels and
  expanded back over the non-empty bins; amax is the edge of the candidate with the least
  KL(P || Q). Details as NVIDIA's pytorch-quantization (`_compute_amax_entropy`) implements it,
  with two changes. Levels are split at fractions of a bin (`kl_divergences` says why); at
  multiples of 128 bins this is the published grouping exactly. And point masses are flattened
  first (`flatten_point_masses`). An exact value
  that repeats (a ReLU's zeros, a uniform background's response in every channel) fills one bin;
  INT8 reproduces it within half a step at any threshold, but Q spreads it over its level, so the
  KL penalty grows with the level's width and drives the search to the smallest threshold, far
  below the data (docs/BENCHMARKS.md section 8). pytorch-quantization flattens the zeros' bin; we
  flatten every such spike.

MSE and Entropy search candidates from bin 128 (amax / 16) upward, as TensorRT does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NUM_BINS = 2048  # TensorRT's histogram size
# A point mass: a bin holding more than POINT_MASS_FACTOR times the median of the bins within
# POINT_MASS_WINDOW of it, and at least POINT_MASS_MIN_SHARE of all values (so a sparse tail, where
# the median is 0, is never taken for spikes).
POINT_MASS_FACTOR = 4.0
POINT_MASS_WINDOW = 8
POINT_MASS_MIN_SHARE = 1e-3
NUM_QUANTIZED_BINS = 128  # |x| levels of symmetric INT8: 0..127 plus the sign
START_BIN = 128  # the smallest candidate threshold, in bins
INT8_LEVELS = 127  # symmetric INT8 uses [-127, 127]


@dataclass
class AbsHistogram:
    counts: np.ndarray  # int64 counts of |x| in len(counts) equal bins over [0, max_abs]
    max_abs: float  # largest |x| seen: the histogram's upper edge and the MinMax amax

    @property
    def bin_width(self) -> float:
        return self.max_abs / len(self.counts)

    @property
    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1) * self.bin_width


def abs_histogram(values: np.ndarray, max_abs: float, num_bins: int = NUM_BINS) -> np.ndarray:
    """Counts of |values| in `num_bins` equal bins over [0, max_abs]; max_abs itself lands in the last bin.

    Callers add these counts up batch by batch, with max_abs fixed beforehand (a first MinMax pass),
    so the histogram does not depend on how the data was batched.
    """
    if max_abs <= 0:
        return np.zeros(num_bins, np.int64)
    counts, _ = np.histogram(np.abs(values), bins=num_bins, range=(0.0, max_abs))
    return counts.astype(np.int64)


def percentile_amax(histogram: AbsHistogram, percentile: float) -> float:
    """Right edge of the bin holding the `percentile`-th percentile of |x| (0 < percentile <= 100)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    total = int(histogram.counts.sum())
    if total == 0 or histogram.max_abs == 0:
        return 0.0
    # The bin holding the k-th smallest |x|, k = ceil(percentile% of the count); rounded first so
    # that float noise (99.9 / 100 * 1e5 = 99900.00000000001) does not ask for one value more.
    needed = math.ceil(round(percentile * total / 100, 6))
    last_bin = int(np.searchsorted(np.cumsum(histogram.counts), needed, side="left"))
    return min(histogram.max_abs, (last_bin + 1) * histogram.bin_width)


def mse_errors(
    histogram: AbsHistogram, levels: int = INT8_LEVELS, start_bin: int = START_BIN
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate amax values, mean squared quantization error of each), candidates at bin centres
    from `start_bin` on. Each bin's values are represented by its centre."""
    counts = histogram.counts.astype(np.float64)
    centres = (np.arange(len(counts)) + 0.5) * histogram.bin_width
    candidates = centres[min(start_bin, len(counts) - 1) :]
    steps = candidates[:, None] / levels
    quantized = np.clip(np.round(centres[None, :] / steps), -levels, levels) * steps
    errors = ((quantized - centres[None, :]) ** 2 * counts[None, :]).sum(axis=1) / max(counts.sum(), 1.0)
    return candidates, errors


def mse_amax(histogram: AbsHistogram, levels: int = INT8_LEVELS, start_bin: int = START_BIN) -> float:
    if histogram.max_abs == 0 or not histogram.counts.any():
        return 0.0
    candidates, errors = mse_errors(histogram, levels, start_bin)
    return float(candidates[int(np.argmin(errors))])


def kl_divergences(
    counts: np.ndarray, num_quantized_bins: int = NUM_QUANTIZED_BINS, start_bin: int = START_BIN
) -> np.ndarray:
    """KL(P || Q) of EntropyCalibration2 for every candidate of i = start_bin .. len(counts) bins
    (element k is the candidate of start_bin + k bins); inf where Q misses mass that P has.

    Q merges the i bins into levels of exactly i / num_quantized_bins bins each, a bin that straddles
    two levels sharing its count between them in proportion. Where i is a multiple of the levels
    this is the published grouping exactly; between multiples the published one (bin j joins level
    floor(j * levels / i)) gives the first level a whole extra bin as soon as i passes a multiple.
    A ReLU's histogram is steepest there, so that one bin raises the divergence by a fifth and the
    curve becomes a sawtooth whose every minimum sits at a multiple of 128 bins: the search then
    compares groupings, not thresholds (docs/BENCHMARKS.md section 8.2). The exact split makes the
    divergence continuous in i."""
    bins = counts.astype(np.float64)
    # A ReLU output's exact zeros pile up in bin 0; every threshold represents them exactly, yet
    # left in they dominate P and drive the search to the smallest threshold. pytorch-quantization
    # replaces the spike by its neighbour; so do we.
    if len(bins) > 1:
        bins[0] = bins[1]
    total = bins.sum()
    if total == 0:
        # Every value fell in bin 0 (a dead tensor, or all values below one bin width): every
        # threshold represents them alike, so all tie and the caller keeps the whole range.
        return np.zeros(len(bins) - start_bin + 1)
    cumulative_counts = np.concatenate([[0.0], np.cumsum(bins)])
    cumulative_nonzero = np.concatenate([[0.0], np.cumsum(bins != 0)])
    divergences = np.full(len(bins) - start_bin + 1, np.inf)
    for k, i in enumerate(range(start_bin, len(bins) + 1)):
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()  # clip: outliers count as the largest kept value
        candidate = _merged_and_expanded(bins[:i], cumulative_counts, cumulative_nonzero, num_quantized_bins)
        divergences[k] = _kl(reference / total, candidate / max(candidate.sum(), 1e-300))
    return divergences


def _merged_and_expanded(
    kept: np.ndarray, cumulative_counts: np.ndarray, cumulative_nonzero: np.ndarray, levels: int
) -> np.ndarray:
    """Q of one candidate: `kept` merged into `levels` equal levels (boundaries at fractions of a
    bin), each level's count spread evenly over its non-empty bins, empty bins kept empty."""
    i = len(kept)
    positions = np.arange(i + 1)
    boundaries = np.arange(levels + 1) * i / levels  # in bins
    level_counts = np.diff(np.interp(boundaries, positions, cumulative_counts[: i + 1]))
    level_nonzero = np.diff(np.interp(boundaries, positions, cumulative_nonzero[: i + 1]))
    density = level_counts / np.maximum(level_nonzero, 1e-12)  # per non-empty bin
    # Bin j spans [j, j + 1): it lies in level `first`, and past that level's right boundary in the next.
    j = np.arange(i)
    first = (j * levels) // i
    share_in_first = np.minimum(boundaries[first + 1] - j, 1.0)
    second = np.minimum(first + 1, levels - 1)
    return np.where(kept != 0, share_in_first * density[first] + (1 - share_in_first) * density[second], 0.0)


def flatten_point_masses(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`counts` as float64 with every point mass cut to the median of its neighbourhood, the mask
    of those bins); see the module docstring. Bin 0 is left to kl_divergences (it takes bin 1's count)."""
    bins = counts.astype(np.float64)
    spikes = np.zeros(len(bins), bool)
    if len(bins) <= 2 * POINT_MASS_WINDOW:
        return bins, spikes
    padded = np.pad(bins, POINT_MASS_WINDOW, mode="reflect")
    medians = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * POINT_MASS_WINDOW + 1), axis=1)
    spikes = (bins > POINT_MASS_FACTOR * np.maximum(medians, 1.0)) & (bins >= POINT_MASS_MIN_SHARE * bins.sum())
    spikes[0] = False
    bins[spikes] = medians[spikes]
    return bins, spikes


def entropy_amax(
    histogram: AbsHistogram, num_quantized_bins: int = NUM_QUANTIZED_BINS, start_bin: int = START_BIN
) -> float:
    """amax of TensorRT's EntropyCalibration2 for `histogram`, point masses flattened first (the
    largest of equally good thresholds), and never below a point mass: an exact value that most
    images share (a background) is kept whole rather than clipped on every one of them."""
    if histogram.max_abs == 0 or not histogram.counts.any():
        return 0.0
    start_bin = min(start_bin, len(histogram.counts))
    bins, spikes = flatten_point_masses(histogram.counts)
    divergences = kl_divergences(bins, num_quantized_bins, start_bin)
    best = len(divergences) - 1 - int(np.argmin(divergences[::-1]))  # ties go to the larger threshold
    highest_spike_edge = (int(np.flatnonzero(spikes)[-1]) + 1) if spikes.any() else 0
    return float(max(start_bin + best, highest_spike_edge) * histogram.bin_width)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    support = p > 0
    if np.any(q[support] == 0):
        return float("inf")
    return float(np.sum(p[support] * np.log(p[support] / q[support])))
