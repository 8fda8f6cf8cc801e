"""One test per comparison over every noise source: searches, seeds and test examples.

The data of one optimizer is a matrix of per-example correctness, units x test examples: a unit
is one replicate run (search r, seed s), its row its `test_correct.npy` (a failed or diverged
run: CHANCE on every example, see `chance_row`). Units are grouped in clusters: the searches
when there are two or more (the seeds of one search share its selected setting, so they are not
independent), else the seeds themselves (then the search is held fixed, and the report says so).

The mean's variance is a crossed-design decomposition (docs/sweeps-and-reports.md, "one test
over every noise source"): V = V_units + V_examples − V_overlap, with
  V_units    = var(cluster means) / clusters          (searches, seeds; clusters − 1 df)
  V_examples = var(per-example means over units) / N  (test-set sampling; N − 1 df)
  V_overlap  = residual mean square / (units · N)     (counted in both terms above)
and Satterthwaite's degrees of freedom for the sum; the interval and p come from Student's t
(scipy.stats.t). A paired comparison (same units: same search index, same seed) works on the
difference matrix; an unpaired one (tuned vs default settings) adds both optimizers' unit terms
(Welch) and keeps the per-example pairing, without the overlap term (conservative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA, LEVEL, POWER = 0.05, 0.95, 0.8
CHANCE = 0.1  # a failed replicate's correctness on every example: a uniform guess, 10 classes
RESAMPLES = 2_000  # bootstrap draws for P(A > B)


@dataclass(frozen=True)
class Units:
    """Per-example correctness (units x examples, floats in [0, 1]) and each unit's cluster.
    `keys` name the units (search, seed) for pairing; N = 1 column: accuracies only."""

    correct: np.ndarray
    clusters: np.ndarray
    keys: tuple[tuple[int, int], ...]

    @property
    def acc(self) -> np.ndarray:
        return self.correct.mean(axis=1)


@dataclass(frozen=True)
class Test:
    """An estimate, its 95% interval and p (for a difference: of 0), with its standard error
    and df; `note` says why there is no interval or test ('' when there is)."""

    value: float
    low: float = math.nan
    high: float = math.nan
    p: float = math.nan
    se: float = math.nan
    df: float = math.nan
    note: str = ""

    @property
    def testable(self) -> bool:
        return not self.note


def _cluster_means(x: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    return np.array([x[clusters == c].mean() for c in np.unique(clusters)])


def _unit_term(x: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """(variance of the mean over clusters, its df); (0, nan) with one cluster."""
    m = _cluster_means(x.mean(axis=1), clusters)
    return (float(m.var(ddof=1) / len(m)), len(m) - 1.0) if len(m) > 1 else (0.0, math.nan)


def _example_term(per_example: np.ndarray) -> tuple[float, float]:
    n = len(per_example)
    return (float(per_example.var(ddof=1) / n), n - 1.0) if n > 1 else (0.0, math.nan)


def _overlap(d: np.ndarray) -> float:
    """Two-way residual mean square / (units · examples): the part both terms count."""
    u, n = d.shape
    if u < 2 or n < 2:
        return 0.0
    r = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + d.mean()
    return float((r**2).sum() / ((u - 1) * (n - 1)) / (u * n))


def _t_test(value: float, terms: list[tuple[float, float]], overlap: float, n_units: int) -> Test:
    terms = [(v, df) for v, df in terms if v > 0]
    if not terms:  # no spread at all: identical runs, or a constant difference
        if value == 0:
            return Test(0.0, p=1.0, note="no spread: the runs are identical")
        # every unit and example moves the same way: the sign test's smallest p over the units
        p = stats.binomtest(n_units, n_units).pvalue if n_units else math.nan
        return Test(value, p=float(p), note="no spread: a constant difference (sign test)")
    var = max(sum(v for v, _ in terms) - overlap, *(v for v, _ in terms))
    df = var**2 / sum(v**2 / df for v, df in terms)  # Satterthwaite (1946)
    se = math.sqrt(var)
    q = stats.t.ppf(0.5 + LEVEL / 2, df)
    p = 2 * stats.t.sf(abs(value) / se, df)
    return Test(value, value - q * se, value + q * se, float(p), se, df)


def mean(a: Units) -> Test:
    """The headline: the optimizer's accuracy over searches, seeds and test examples."""
    if len(a.correct) == 0:
        return Test(math.nan, note="no replicate")
    terms = [_unit_term(a.correct, a.clusters), _example_term(a.correct.mean(axis=0))]
    return _t_test(float(a.correct.mean()), terms, _overlap(a.correct), len(a.correct))


def difference(a: Units, b: Units) -> Test:
    """a − b, paired on the units when both have the same ones (search index and seed), else
    unpaired at the unit level (still paired per test example; e.g. tuned vs default)."""
    if len(a.correct) == 0 or len(b.correct) == 0 or a.correct.shape[1] != b.correct.shape[1]:
        return Test(math.nan, note="no results to compare")
    if set(a.keys) == set(b.keys):
        ib = [b.keys.index(k) for k in a.keys]
        d = a.correct - b.correct[ib]
        terms = [_unit_term(d, a.clusters), _example_term(d.mean(axis=0))]
        return _t_test(float(d.mean()), terms, _overlap(d), len(d))
    terms = [_unit_term(a.correct, a.clusters), _unit_term(b.correct, b.clusters)]
    terms.append(_example_term(a.correct.mean(axis=0) - b.correct.mean(axis=0)))
    value = float(a.correct.mean() - b.correct.mean())
    return _t_test(value, terms, 0.0, min(len(a.correct), len(b.correct)))


def smallest_detectable(t: Test, family: int) -> float:
    """The difference this budget detects with POWER at the first Holm step (level ALPHA/m):
    (t_{1−α/2m} + t_{power}) · se, with the comparison's own se and df (a planning figure)."""
    if not t.testable or math.isnan(t.se):
        return math.nan
    level = ALPHA / max(family, 1)
    return float((stats.t.ppf(1 - level / 2, t.df) + stats.t.ppf(POWER, t.df)) * t.se)


def probability_of_improvement(a: Units, b: Units, seed: int = 0) -> Test:
    """P(A > B): the chance a run of A scores a higher test accuracy than a run of B (ties
    half), over all pairs of their runs (Agarwal et al. 2021, rliable), with a 95% percentile
    bootstrap interval resampling each side's clusters (searches, or seeds with one search).
    Over searches and seeds; the test set held fixed."""
    xa, xb = a.acc, b.acc
    if len(xa) == 0 or len(xb) == 0:
        return Test(math.nan, note="no results")

    def p_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # (..., n) x (..., m) -> (...)
        diff = x[..., :, None] - y[..., None, :]
        return (diff > 0).mean(axis=(-2, -1)) + 0.5 * (diff == 0).mean(axis=(-2, -1))

    rng = np.random.default_rng(seed)
    value = float(p_of(xa, xb))
    draws = [_resample(x, u.clusters, rng) for x, u in ((xa, a), (xb, b))]
    if draws[0] is None or draws[1] is None:
        return Test(value, note="one cluster: no interval")
    low, high = np.percentile(p_of(draws[0], draws[1]), [2.5, 97.5])
    return Test(value, float(low), float(high))


def _resample(x: np.ndarray, clusters: np.ndarray, rng) -> np.ndarray | None:
    """RESAMPLES x len(x) draws: whole clusters with replacement (equal-sized clusters)."""
    labels = np.unique(clusters)
    if len(labels) < 2:
        return None
    groups = [x[clusters == c] for c in labels]
    size = min(len(g) for g in groups)
    table = np.stack([g[:size] for g in groups])  # (clusters, size)
    pick = rng.integers(0, len(labels), size=(RESAMPLES, len(labels)))
    return table[pick].reshape(RESAMPLES, -1)
