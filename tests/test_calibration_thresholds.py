import warnings
from collections import Counter

import numpy as np
import pytest

from calibration.thresholds import (
    START_BIN,
    AbsHistogram,
    abs_histogram,
    entropy_amax,
    flatten_point_masses,
    kl_divergences,
    mse_amax,
    mse_errors,
    percentile_amax,
)

log = np.log


def histogram_of(values: np.ndarray) -> AbsHistogram:
    max_abs = float(np.abs(values).max())
    return AbsHistogram(abs_histogram(values, max_abs), max_abs)


def test_abs_histogram_bins_absolute_values_and_keeps_the_max():
    counts = abs_histogram(np.array([-4.0, -0.5, 0.0, 0.9, 1.0, 3.99, 4.0], np.float32), 4.0, num_bins=4)
    assert counts.tolist() == [3, 1, 0, 3]  # 0, 0.5, 0.9 | 1.0 | - | 3.99, |-4|, 4 (the max lands in the last bin)
    assert abs_histogram(np.zeros(5, np.float32), 0.0, num_bins=4).tolist() == [0, 0, 0, 0]


def test_histogram_edges():
    histogram = AbsHistogram(np.array([1, 2, 3, 4]), 2.0)
    assert histogram.bin_width == 0.5
    np.testing.assert_allclose(histogram.edges, [0, 0.5, 1, 1.5, 2])


@pytest.mark.parametrize(("percentile", "amax"), [(50, 1.0), (50.1, 2.0), (80, 2.0), (90, 3.0), (100, 3.0)])
def test_percentile_is_the_right_edge_of_the_bin_holding_it(percentile, amax):
    # |x| counts 5, 3, 2, 0 in bins of width 1: cumulative share 0.5, 0.8, 1.0, 1.0.
    assert percentile_amax(AbsHistogram(np.array([5, 3, 2, 0]), 4.0), percentile) == amax


def test_percentile_matches_numpy_within_a_bin():
    values = np.random.default_rng(0).normal(0, 1, 100_000).astype(np.float32)
    histogram = histogram_of(values)
    for percentile in (99.0, 99.9, 99.99):
        exact = np.percentile(np.abs(values), percentile)
        assert exact <= percentile_amax(histogram, percentile) <= exact + histogram.bin_width


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError):
        percentile_amax(AbsHistogram(np.array([1, 1]), 1.0), 0)


def test_mse_hand_computed():
    # Bin centres 0.5, 1.5, 2.5, 3.5 with counts 0, 6, 0, 1; one level each side (levels=1), so a
    # candidate t quantizes c to clip(round(c / t), -1, 1) * t.
    histogram = AbsHistogram(np.array([0, 6, 0, 1]), 4.0)
    candidates, errors = mse_errors(histogram, levels=1, start_bin=0)
    np.testing.assert_allclose(candidates, [0.5, 1.5, 2.5, 3.5])
    expected = np.array(
        [
            6 * (1.5 - 0.5) ** 2 + (3.5 - 0.5) ** 2,  # t=0.5: both clipped to 0.5
            6 * 0 + (3.5 - 1.5) ** 2,  # t=1.5: 1.5 exact, 3.5 clipped to 1.5
            6 * (1.5 - 2.5) ** 2 + (3.5 - 2.5) ** 2,  # t=2.5: 1.5 rounds up to 2.5, 3.5 clipped
            6 * 1.5**2 + 0,  # t=3.5: 1.5 rounds to 0, 3.5 exact
        ]
    )
    np.testing.assert_allclose(errors, expected / 7)
    assert mse_amax(histogram, levels=1, start_bin=0) == 1.5  # clips the outlier


def test_kl_divergences_hand_computed():
    # |x| counts 2, 2, 2, 1 (bin width 1), merged into 2 levels, candidates of 2, 3 and 4 bins.
    counts = np.array([2, 2, 2, 1])
    expected = [
        # 2 bins: P = [2, 2+2+1] / 7 (outliers into the last kept bin); Q = one bin per level = [2, 2] / 4.
        2 / 7 * log((2 / 7) / 0.5) + 5 / 7 * log((5 / 7) / 0.5),
        # 3 bins: P = [2, 2, 2+1] / 7; levels {0, 1} and {2}: Q = [2, 2, 2] / 6.
        2 * (2 / 7) * log((2 / 7) / (1 / 3)) + 3 / 7 * log((3 / 7) / (1 / 3)),
        # 4 bins: P = [2, 2, 2, 1] / 7; levels {0, 1} and {2, 3}: Q = [2, 2, 1.5, 1.5] / 7.
        2 / 7 * log(2 / 1.5) + 1 / 7 * log(1 / 1.5),
    ]
    np.testing.assert_allclose(kl_divergences(counts, num_quantized_bins=2, start_bin=2), expected, rtol=1e-12)
    # The least divergence is at 3 bins: amax = 3 bin widths, clipping the last bin.
    assert entropy_amax(AbsHistogram(counts, 4.0), num_quantized_bins=2, start_bin=2) == 3.0


def test_kl_is_infinite_when_clipped_mass_lands_in_an_empty_bin():
    divergences = kl_divergences(np.array([2, 2, 0, 1]), num_quantized_bins=2, start_bin=2)
    assert divergences[1] == np.inf  # 3 bins: P puts the outlier into bin 2, where Q has nothing
    assert np.isfinite(divergences[[0, 2]]).all()


def test_zero_spike_in_bin_0_is_ignored():
    # A ReLU output's exact zeros: replacing bin 0 by its neighbour (as pytorch-quantization does)
    # makes the result independent of how many zeros there are.
    rng = np.random.default_rng(0)
    positive = np.abs(rng.normal(0, 1, 100_000)).astype(np.float32)
    histogram = histogram_of(positive)
    with_zeros = AbsHistogram(histogram.counts.copy(), histogram.max_abs)
    with_zeros.counts[0] += 100_000
    assert entropy_amax(with_zeros) == entropy_amax(histogram)
    assert entropy_amax(histogram) > 0.5 * histogram.max_abs  # no collapse to the smallest candidate


def _reference_kl_divergences(counts: np.ndarray, num_quantized_bins: int, start_bin: int) -> np.ndarray:
    """Loop port of pytorch-quantization's _compute_amax_entropy (calib/histogram.py), with scipy's entropy."""
    bins = counts.astype(np.float64)
    bins[0] = bins[1]
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=num_quantized_bins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        density_counts = np.zeros(num_quantized_bins)
        for idx, level in enumerate(digitized):
            if level != -1:
                density_counts[level] += bins[idx]
        for level, count in Counter(digitized).items():
            if level != -1:
                density_counts[level] /= count
        candidate = np.array([density_counts[level] if level != -1 else 0.0 for level in digitized])
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        p, q = reference / reference.sum(), candidate / candidate.sum()
        support = p > 0
        if np.any(q[support] == 0):
            divergences.append(np.inf)
        else:
            divergences.append(np.sum(p[support] * np.log(p[support] / q[support])))
    return np.array(divergences)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_matches_a_loop_port_of_nvidias_reference_where_levels_hold_whole_bins(seed):
    # Where the candidate's bins are a multiple of the levels, every level holds whole bins and
    # the exact split is the published grouping.
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.laplace(0, 1, 20_000), rng.normal(0, 4, 50)]).astype(np.float32)
    counts = abs_histogram(values, float(np.abs(values).max()), num_bins=256)
    counts[100:110] = 0  # empty bins: Q must keep them empty
    ours, reference = kl_divergences(counts, 16, 16), _reference_kl_divergences(counts, 16, 16)
    whole = np.arange(16, 257) % 16 == 0
    np.testing.assert_allclose(ours[whole], reference[whole], rtol=1e-9)
    assert not np.allclose(ours[~whole], reference[~whole], rtol=1e-3)  # elsewhere they differ


def test_kl_splits_a_bin_across_two_levels_in_proportion():
    # Bin 0 takes bin 1's count: [4, 4, 2, 1]. 3 bins in 2 levels of 1.5 bins: level 0 holds bin 0
    # and half of bin 1 (6 over 1.5 non-empty bins: 4 per bin), level 1 the other half and bin 2
    # (4 over 1.5: 8/3). Q = [4, (4 + 8/3) / 2, 8/3] = [4, 10/3, 8/3] / 10; P = [4, 4, 2 + 1] / 11.
    p, q = np.array([4, 4, 3]) / 11, np.array([4, 10 / 3, 8 / 3]) / 10
    divergences = kl_divergences(np.array([2, 4, 2, 1]), num_quantized_bins=2, start_bin=2)
    np.testing.assert_allclose(divergences[1], np.sum(p * log(p / q)), rtol=1e-12)


def test_kl_curve_of_a_relu_output_has_no_sawtooth():
    # A ReLU-like half-normal whose first bins are uneven, as a trained MobileNetV2's early ReLUs are
    # (small values that many pixels share). The published grouping gives the first level a whole
    # extra bin as soon as the candidate passes a multiple of the levels, and the divergence jumps
    # there; the exact split keeps it continuous, so the search is not pulled onto those multiples.
    rng = np.random.default_rng(0)
    counts = histogram_of(np.abs(rng.normal(0, 1, 1_000_000)).astype(np.float32)).counts
    counts[1:9] += np.array([3, 1, 3, 0, 4, 1, 2, 0]) * 100_000
    ours, reference = kl_divergences(counts), _reference_kl_divergences(counts, 128, START_BIN)
    multiples = np.flatnonzero(np.arange(START_BIN, len(counts) + 1) % 128 == 0)[:-1]
    # the body of the histogram: in its sparse tail divergences are ~0 (one value per level) or infinite
    after = multiples + 1
    body = np.isfinite(reference[after] + ours[after] + ours[multiples])
    body &= (ours[multiples] > 1e-9) & (ours[after] > 1e-9)
    multiples = multiples[body]
    assert len(multiples) >= 8
    reference_jumps = reference[multiples + 1] / reference[multiples]
    our_jumps = ours[multiples + 1] / ours[multiples]
    assert np.abs(reference_jumps - 1).max() > 0.2  # the sawtooth this replaces
    assert np.abs(our_jumps - 1).max() < 0.01


def test_heavy_tailed_distribution_is_clipped_except_by_minmax():
    # Laplace(0, 1) with two rare large outliers: MinMax spends the 8 bits on the outliers.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.laplace(0, 1, 1_000_000), [-40.0, 40.0]]).astype(np.float32)
    histogram = histogram_of(values)
    assert histogram.max_abs == 40.0  # the MinMax amax
    assert 9.0 < percentile_amax(histogram, 99.99) < 10.0  # Laplace: -ln(1e-4) = 9.2
    assert entropy_amax(histogram) < 0.3 * histogram.max_abs
    assert mse_amax(histogram) < 0.5 * histogram.max_abs


def test_uniform_distribution_keeps_about_the_max():
    values = np.random.default_rng(0).uniform(-1, 1, 200_000).astype(np.float32)
    histogram = histogram_of(values)
    assert entropy_amax(histogram) >= 0.98 * histogram.max_abs
    assert mse_amax(histogram) >= 0.95 * histogram.max_abs
    assert percentile_amax(histogram, 99.99) >= 0.99 * histogram.max_abs


@pytest.mark.parametrize("method", [entropy_amax, mse_amax, lambda h: percentile_amax(h, 99.9)])
def test_empty_or_zero_histogram_gives_zero(method):
    assert method(AbsHistogram(np.zeros(2048, np.int64), 0.0)) == 0.0


@pytest.mark.parametrize("spikes", [1, 4, 16])
def test_point_masses_do_not_drive_entropy_to_the_smallest_threshold(spikes):
    # Continuous content plus a few exact values repeated (a uniform background's response per
    # channel, 60 % of all values). Plain EntropyCalibration2 settles just above the spikes (amax
    # 0.5-1.5 where the content reaches 4.7); flattened first, the result is the spike-free one.
    rng = np.random.default_rng(0)
    content = np.abs(rng.normal(0, 1.0, 200_000)).astype(np.float32)
    background = np.repeat(rng.uniform(0.05, 0.6, spikes).astype(np.float32), 300_000 // spikes)
    with_spikes = histogram_of(np.concatenate([content, background]))
    without = AbsHistogram(abs_histogram(content, with_spikes.max_abs), with_spikes.max_abs)
    plain = kl_divergences(with_spikes.counts)
    plain_amax = (START_BIN + len(plain) - 1 - int(np.argmin(plain[::-1]))) * with_spikes.bin_width
    assert plain_amax < 0.35 * with_spikes.max_abs  # the artefact, as TensorRT's algorithm has it
    assert entropy_amax(with_spikes) == entropy_amax(without) > 0.85 * with_spikes.max_abs


def test_flattening_leaves_smooth_histograms_and_sparse_tails_alone():
    rng = np.random.default_rng(1)
    smooth = abs_histogram(rng.laplace(0, 1, 1_000_000).astype(np.float32), 14.0)
    bins, spikes = flatten_point_masses(smooth)
    np.testing.assert_array_equal(bins, smooth)
    assert not spikes.any()
    with_tail = smooth.copy()
    with_tail[[1500, 1800, 2047]] += [9, 7, 5]  # lone large values among empty bins: not point masses
    assert not flatten_point_masses(with_tail)[1].any()


def test_a_near_constant_tensor_keeps_its_constant():
    # One value nearly everywhere (a background), a few others: never clipped below the constant.
    counts = np.zeros(2048, np.int64)
    counts[1000], counts[[10, 20, 2047]] = 1_000_000, [3, 2, 1]
    histogram = AbsHistogram(counts, 2.048)
    assert flatten_point_masses(counts)[1][1000]
    assert entropy_amax(histogram) >= 1.001


def test_values_all_in_the_first_bin_keep_the_whole_range_without_a_warning():
    # Bin 0 is replaced by bin 1 (the ReLU-zeros rule), so such a histogram has no mass left: every
    # threshold ties and entropy keeps the max rather than dividing 0 by 0.
    counts = np.zeros(2048, np.int64)
    counts[0] = 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert entropy_amax(AbsHistogram(counts, 2.048)) == pytest.approx(2.048)
