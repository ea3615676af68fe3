"""The comparison statistics on synthetic samples whose answer is known."""

import numpy as np
import pytest

from mimicnorm_deploy.latency_stats import median_interval, ratio_of_medians, ratio_verdict


def latencies(rng, n, scale=1.0):
    # Right-skewed like real latencies: a floor plus a lognormal tail.
    return scale * (0.5 + rng.lognormal(-1.0, 0.5, n))


def test_identical_distributions_show_no_detectable_difference():
    rng = np.random.default_rng(0)
    estimate = ratio_of_medians(latencies(rng, 400), latencies(rng, 400), resamples=1000)
    assert estimate.low < 1 < estimate.high
    assert estimate.verdict == "no detectable difference"
    assert "no detectable difference (tolerance 2 %)" in estimate.describe()


def test_a_twenty_percent_shift_is_detected_and_sized():
    rng = np.random.default_rng(1)
    estimate = ratio_of_medians(latencies(rng, 400, 1.2), latencies(rng, 400), resamples=1000)
    assert estimate.verdict == "slower"
    assert estimate.low < 1.2 < estimate.high
    assert estimate.high - estimate.low < 0.1
    faster = ratio_of_medians(latencies(rng, 400), latencies(rng, 400, 1.2), resamples=1000)
    assert faster.verdict == "faster"
    assert "% faster" in faster.describe()


def test_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    covered = 0
    trials = 60
    for seed in range(trials):
        rng = np.random.default_rng(100 + seed)
        estimate = ratio_of_medians(latencies(rng, 150, 1.1), latencies(rng, 150), resamples=500, seed=seed)
        # The true ratio of medians of the two distributions is exactly 1.1 (a pure scale change).
        covered += estimate.low <= 1.1 <= estimate.high
    assert covered >= 0.85 * trials


def test_paired_rounds_cancel_drift_that_hits_both_engines():
    # Each round the machine is slower by a common factor; engine a is 5 % slower than b throughout.
    rng = np.random.default_rng(2)
    drift = [1.0, 1.6, 0.9, 1.3, 1.1]
    a = np.concatenate([latencies(rng, 100, 1.05 * d) for d in drift])
    b = np.concatenate([latencies(rng, 100, d) for d in drift])
    rounds = [100] * 5
    paired = ratio_of_medians(a, b, rounds_a=rounds, rounds_b=rounds, paired=True, resamples=1000)
    unpaired = ratio_of_medians(a, b, rounds_a=rounds, rounds_b=rounds, resamples=1000)
    assert paired.paired and paired.low < 1.05 < paired.high
    # Resampling the rounds independently lets the drift into the ratio: a wider interval.
    assert paired.high - paired.low < unpaired.high - unpaired.low


def test_verdict_edges_and_bad_input():
    assert ratio_verdict(0.99, 1.01) == "no detectable difference"
    assert ratio_verdict(1.01, 1.015) == "no detectable difference"  # excludes 1, within the tolerance
    assert ratio_verdict(1.03, 1.05) == "slower"
    assert ratio_verdict(0.90, 0.97) == "faster"
    with pytest.raises(ValueError, match="at least 2"):
        ratio_of_medians([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="per-round counts"):
        ratio_of_medians([1.0, 2.0], [1.0, 2.0], paired=True)


def test_median_interval_brackets_the_true_median():
    rng = np.random.default_rng(3)
    samples = latencies(rng, 300)
    interval = median_interval(samples, resamples=500)
    assert interval.low <= interval.value <= interval.high
    assert interval.value == np.median(samples)
    assert interval.low < 0.5 + np.exp(-1.0) < interval.high  # the lognormal's median plus the floor
    by_round = median_interval(samples, [100, 100, 100], resamples=500)
    assert by_round.low <= by_round.value <= by_round.high
