"""The statistics of the fair comparison: small pure functions on numpy arrays.

Each function is one documented method built on scipy.stats (docs/sweeps-and-reports.md, "How
the comparison is judged"). Two noise sources, two kinds of interval:

- over seeds: training noise (initial weights, data order), the test set held fixed;
- over test samples: test-set sampling noise, the trained models held fixed.

Accuracies are fractions in [0, 1]; `correct` arrays are bools of shape (seeds, test samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
LEVEL = 0.95
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
SIGN_FLIPS = 9_999  # Monte Carlo draws of the test-set sign-flip test
SIGN_FLIP_FLOOR = 2 / (SIGN_FLIPS + 1)  # its smallest two-sided p


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its confidence interval and (for a difference) the p-value of 0."""

    value: float
    low: float = math.nan
    high: float = math.nan
    p: float = math.nan


def _constant(x: np.ndarray) -> bool:
    return bool(np.allclose(x, x[0], rtol=0, atol=1e-12))


def mean_ci(x: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean with Student's t interval (scipy.stats.ttest_1samp), e.g. over seeds.

    Assumes the values are independent draws of a roughly normal quantity: with 5 seeds the
    interval leans on that assumption. No interval from one value; a zero one from equal values.
    """
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return Estimate(math.nan)
    if len(x) == 1 or _constant(x):
        mean = float(x.mean())
        return Estimate(mean) if len(x) == 1 else Estimate(mean, mean, mean)
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(level)
    return Estimate(float(x.mean()), float(ci.low), float(ci.high))


def paired_seeds(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean of a − b over paired seeds, its t interval and the paired t-test's p (ttest_rel).

    Covers seed noise only. With n seeds there are n − 1 degrees of freedom; at n = 5 the
    interval is 2.78 standard errors wide each side. Equal differences have no spread: p = nan.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    if len(d) < 2 or _constant(d):
        mean = float(d.mean()) if len(d) else math.nan
        return Estimate(mean) if len(d) < 2 else Estimate(mean, mean, mean, math.nan)
    result = stats.ttest_rel(a, b)
    ci = result.confidence_interval(level)
    return Estimate(float(d.mean()), float(ci.low), float(ci.high), float(result.pvalue))


def sign_flip_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation test of paired differences (permutation_test).

    Needs no normality, but with n pairs its smallest p is 2 / 2**n (0.0625 at n = 5), as for
    the Wilcoxon signed-rank test: it cannot reject at 0.05 with 5 seeds.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    result = stats.permutation_test(
        (d,), _mean, permutation_type="samples", vectorized=True, n_resamples=math.inf
    )
    return float(result.pvalue)


def smallest_sign_flip_p(n: int) -> float:
    """The smallest two-sided p an exact sign-flip or Wilcoxon test reaches with n pairs."""
    return 2.0 / 2**n


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """McNemar's exact test: of the samples only one model gets right, is each model's share
    1/2? scipy.stats.binomtest on the discordant counts; two-sided. One run per model."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b).pvalue


def paired_samples(
    correct_a: np.ndarray, correct_b: np.ndarray, level: float = LEVEL, seed: int = 0
) -> Estimate:
    """Accuracy difference a − b over the shared test set, paired per test sample.

    `correct_*`: (seeds, samples), seeds paired row by row. Per sample, d_i = mean over seeds
    of (a right) − (b right); their mean is the seed-averaged accuracy difference. Interval:
    t over the test samples (ttest_1samp; thousands of samples). p: McNemar's exact test with
    one seed; with more, its generalisation, the sign-flip permutation test of the d_i (exact
    up to Monte Carlo error: SIGN_FLIPS draws, seeded, so p >= SIGN_FLIP_FLOOR). Covers
    test-set sampling noise only.
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=float))
    b = np.atleast_2d(np.asarray(correct_b, dtype=float))
    d = (a - b).mean(axis=0)
    if _constant(d):  # includes identical predictions
        return Estimate(float(d.mean()), float(d[0]), float(d[0]), 1.0 if d[0] == 0 else 0.0)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(level)
    if len(a) == 1:
        p = mcnemar_exact(a[0].astype(bool), b[0].astype(bool))
    else:  # zeros do not change under a sign flip: test the discordant samples only
        nonzero = d[d != 0]
        p = stats.permutation_test(
            (nonzero,),
            _mean,
            permutation_type="samples",
            vectorized=True,
            n_resamples=SIGN_FLIPS,
            batch=max(1, 10_000_000 // len(nonzero)),
            rng=np.random.default_rng(seed),
        ).pvalue
    return Estimate(float(d.mean()), float(ci.low), float(ci.high), float(p))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment: controls the family-wise error rate, any dependence.

    The i-th smallest of m p-values is multiplied by (m − i + 1); running maximum; capped at 1.
    A missing p (nan) counts as 1 and takes a place in m.
    """
    p = np.nan_to_num(np.asarray(p, dtype=float), nan=1.0)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def verdict(difference: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """'better' / 'worse' for the first of the pair, or 'no detectable difference'."""
    if not p_adjusted < alpha:  # nan: no test
        return NO_DIFFERENCE
    return BETTER if difference > 0 else WORSE


def expected_max(scores: np.ndarray, ks: Sequence[int], axis: int = -1) -> np.ndarray:
    """Expected best score of k trials drawn with replacement from `scores` (Dodge et al. 2019).

    With v_(1) <= ... <= v_(N): E[max of k] = sum_i v_(i) [(i/N)^k - ((i-1)/N)^k]. Vectorised
    over the other axes of `scores` (for the bootstrap); the result has len(ks) first.
    """
    s = np.sort(np.moveaxis(np.asarray(scores, dtype=float), axis, -1), axis=-1)
    n = s.shape[-1]
    i = np.arange(1, n + 1)
    k = np.asarray(ks, dtype=float)[:, None]
    weights = (i / n) ** k - ((i - 1) / n) ** k  # (len(ks), N)
    return np.einsum("kn,...n->k...", weights, s)


def expected_max_band(
    scores: np.ndarray, ks: Sequence[int], level: float = LEVEL, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap band of `expected_max` over the trials (scipy.stats.bootstrap)."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) < 2 or _constant(scores):
        line = expected_max(scores, ks)
        return line, line
    result = stats.bootstrap(
        (scores,),
        lambda s, axis: expected_max(s, ks, axis),
        vectorized=True,
        method="percentile",
        confidence_level=level,
        n_resamples=2_000,
        rng=np.random.default_rng(seed),
    )
    return result.confidence_interval.low, result.confidence_interval.high


@dataclass(frozen=True)
class Rank:
    rank: int  # of its tie group: 1 + how many are in the groups above
    best: int  # the best place the verdicts allow: 1 + how many are detectably better
    worst: int  # the worst: n − how many are detectably worse
    tied_with: tuple[str, ...]  # no detectable difference from these


def rank_with_ties(names: Sequence[str], beats: set[tuple[str, str]]) -> dict[str, Rank]:
    """Tie groups from pairwise verdicts: (a, b) in `beats` when a is detectably better than b.

    `names` best mean first. Going down the list, a name joins the current group when it has
    no detectable difference from every member, else it starts the next group; a group's
    members share its rank (1, 1, 3, ...). As "no detectable difference" is not transitive,
    each name also gets the range of places the verdicts allow, and whom it is tied with.
    """

    def tied(x: str, y: str) -> bool:
        return (x, y) not in beats and (y, x) not in beats

    groups: list[list[str]] = []
    for x in names:
        if groups and all(tied(x, g) for g in groups[-1]):
            groups[-1].append(x)
        else:
            groups.append([x])
    out, above = {}, 0
    for group in groups:
        for x in group:
            better = sum((y, x) in beats for y in names)
            worse = sum((x, y) in beats for y in names)
            others = tuple(y for y in names if y != x and tied(x, y))
            out[x] = Rank(1 + above, 1 + better, len(names) - worse, others)
        above += len(group)
    return out
