"""The comparison's statistics against scipy.stats on known data, and cases checked by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from pipeline.sweeps.protocol import stats


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
