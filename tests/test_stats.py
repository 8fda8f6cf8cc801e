"""The comparison's statistics against scipy.stats on known data, and cases checked by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from pipeline.sweeps.protocol import stats


def test_mean_ci_is_students_t_interval():
    # By hand: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2 df) = 4.302653 -> 2 ± 2.484138.
    e = stats.mean_ci([1.0, 2.0, 3.0])
    assert (e.value, e.low, e.high) == pytest.approx((2.0, 2 - 2.484138, 2 + 2.484138), abs=1e-6)
    x = np.array([0.91, 0.915, 0.905, 0.92, 0.912])
    low, high = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
    assert (stats.mean_ci(x).low, stats.mean_ci(x).high) == pytest.approx((low, high))


def test_mean_ci_of_one_or_equal_values():
    assert math.isnan(stats.mean_ci([0.9]).low) and stats.mean_ci([0.9]).value == 0.9
    assert (stats.mean_ci([0.9, 0.9]).low, stats.mean_ci([0.9, 0.9]).high) == (0.9, 0.9)
    assert math.isnan(stats.mean_ci([]).value)


def test_paired_seeds_is_ttest_rel():
    a = np.array([0.95, 0.952, 0.948, 0.951, 0.953])
    b = np.array([0.94, 0.945, 0.941, 0.946, 0.942])
    e = stats.paired_seeds(a, b)
    ref = st.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert (e.value, e.low, e.high, e.p) == pytest.approx(
        ((a - b).mean(), ci.low, ci.high, ref.pvalue)
    )
    # By hand: differences 1, 2, 3 -> mean 2, se 1/sqrt(3), t = 2 sqrt(3) = 3.4641 on 2 df.
    by_hand = stats.paired_seeds([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    assert by_hand.p == pytest.approx(2 * st.t.sf(2 * math.sqrt(3), 2))
    assert by_hand.p == pytest.approx(0.074180, abs=1e-6)


def test_paired_seeds_with_no_spread_has_no_p():
    e = stats.paired_seeds([0.9, 0.9, 0.9], [0.9, 0.9, 0.9])
    assert e.value == 0 and math.isnan(e.p)
    assert math.isnan(stats.paired_seeds([0.9], [0.8]).p)


def test_sign_flip_and_wilcoxon_cannot_reject_with_five_seeds():
    a = np.array([0.97, 0.971, 0.972, 0.969, 0.975])
    b = a - np.array([0.01, 0.02, 0.015, 0.012, 0.018])  # all five differences positive
    assert stats.sign_flip_p(a, b) == pytest.approx(0.0625)
    assert stats.smallest_sign_flip_p(5) == 0.0625 == st.wilcoxon(a - b).pvalue
    assert stats.paired_seeds(a, b).p < 0.01  # the t-test can


def test_mcnemar_exact_by_hand_and_against_binomtest():
    # 8 samples only a gets right, 2 only b: p = 2 * P(X <= 2 | n = 10, 1/2) = 2 * 56 / 1024.
    a = np.array([1] * 8 + [0] * 2 + [1] * 50 + [0] * 40, dtype=bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 50 + [0] * 40, dtype=bool)
    assert stats.mcnemar_exact(a, b) == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(a, b) == pytest.approx(st.binomtest(8, 10).pvalue)
    assert stats.mcnemar_exact(a, a) == 1.0


def test_paired_samples_with_one_seed_is_mcnemar():
    rng = np.random.default_rng(3)
    a = rng.random(1000) < 0.92
    b = np.where(rng.random(1000) < 0.1, ~a, a)
    e = stats.paired_samples(a[None], b[None])
    assert e.value == pytest.approx(a.mean() - b.mean())
    assert e.p == pytest.approx(stats.mcnemar_exact(a, b))
    ci = st.ttest_1samp(a.astype(float) - b, 0).confidence_interval()
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high))


def test_paired_samples_over_seeds_is_a_sign_flip_test_of_per_sample_differences():
    rng = np.random.default_rng(4)
    base = rng.random(2000)
    a = base[None] + rng.normal(0, 0.05, (3, 2000)) < 0.95
    b = base[None] + rng.normal(0, 0.05, (3, 2000)) < 0.94
    e = stats.paired_samples(a, b)
    d = (a.astype(float) - b).mean(axis=0)
    assert e.value == pytest.approx(a.mean() - b.mean()) == pytest.approx(d.mean())
    ref = st.permutation_test(
        (d[d != 0],), np.mean, permutation_type="samples", n_resamples=9_999, rng=0
    )
    assert e.p == pytest.approx(ref.pvalue, abs=0.01)
    # Thousands of samples: close to the large-sample t-test over samples.
    assert e.p == pytest.approx(st.ttest_1samp(d, 0).pvalue, rel=0.3, abs=0.002)
    assert stats.paired_samples(a, a).p == 1.0


def test_holm_by_hand():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max.
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.9 * 1 < 1.0: running max
    assert stats.holm([0.01, math.nan]) == pytest.approx([0.02, 1.0])  # nan counts as 1


def test_holm_is_between_bonferroni_and_raw():
    p = np.random.default_rng(5).random(10) ** 3
    adjusted = stats.holm(p)
    assert np.all(p <= adjusted) and np.all(adjusted <= np.minimum(p * len(p), 1))
    assert adjusted[np.argmin(p)] == pytest.approx(min(1, p.min() * len(p)))


def test_verdict():
    assert stats.verdict(0.01, 0.001) == "better"
    assert stats.verdict(-0.01, 0.001) == "worse"
    assert stats.verdict(0.01, 0.2) == stats.verdict(0.01, math.nan) == "no detectable difference"


def test_expected_max_is_the_mean_of_the_best_of_k_draws():
    scores = np.array([0.2, 0.9, 0.5, 0.7])
    for k in (1, 2, 3):
        draws = itertools.product(scores, repeat=k)  # every equally likely draw of k trials
        brute = np.mean([max(d) for d in draws])
        assert stats.expected_max(scores, [k])[0] == pytest.approx(brute)
    assert stats.expected_max(scores, [1])[0] == pytest.approx(scores.mean())
    assert stats.expected_max(scores, [200])[0] == pytest.approx(0.9)
    # Vectorised over the other axes, as scipy.stats.bootstrap calls it.
    batch = np.stack([scores, scores[::-1], scores + 0.1])
    assert stats.expected_max(batch, [1, 2]).shape == (2, 3)


def test_expected_max_band_brackets_the_curve():
    scores = np.random.default_rng(6).uniform(0.8, 0.98, 30)
    ks = np.arange(1, 31)
    line = stats.expected_max(scores, ks)
    low, high = stats.expected_max_band(scores, ks)
    assert np.all(low <= line) and np.all(high[:5] >= line[:5])
    assert np.all(low >= scores.min()) and np.all(high <= scores.max())
    assert np.all(np.diff(line) >= 0)
    # scipy.stats.bootstrap of the same statistic, same seed: the same band.
    ref = st.bootstrap(
        (scores,), lambda s, axis: stats.expected_max(s, ks, axis), method="percentile",
        n_resamples=2_000, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert low == pytest.approx(ref.confidence_interval.low)


def test_ranking_ties_by_hand():
    # a > c detectably, b undecided against both: a and b share rank 1; c may be 2nd or 3rd.
    ranks = stats.rank_with_ties(["a", "b", "c"], {("a", "c")})
    assert (ranks["a"].rank, ranks["b"].rank, ranks["c"].rank) == (1, 1, 3)
    assert (ranks["a"].best, ranks["a"].worst) == (1, 2)
    assert (ranks["c"].best, ranks["c"].worst) == (2, 3)
    assert ranks["b"].tied_with == ("a", "c") and ranks["a"].tied_with == ("b",)
    # A clear order: no ties at all.
    clear = stats.rank_with_ties(["a", "b", "c"], {("a", "b"), ("a", "c"), ("b", "c")})
    assert [(r.rank, r.best, r.worst) for r in clear.values()] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    # Nothing decided: one group.
    assert {r.rank for r in stats.rank_with_ties(["a", "b", "c"], set()).values()} == {1}
