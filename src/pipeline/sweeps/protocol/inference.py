"""One test per comparison over every noise source: searches, seeds and test examples.

The data of one optimizer is a matrix of per-example correctness, units x test examples: a unit
is one replicate run (search r, seed s), its row its `test_correct.npy` (a failed or diverged
run: CHANCE on every example, see `chance_row`). Units are grouped in clusters: the searches
when there are two or more (the seeds of one search share its selected setting, so they are not
independent), else the seeds themselves (then the search is held fixed, and the report says so).

The mean's variance is a crossed-design decomposition (docs/sweeps-and-reports.md, "one test
over every noise source") into two parts, each estimated with its own degrees of freedom:
  V_units    = var(cluster means) / clusters          (searches, seeds; clusters − 1 df)
  V_examples = var(per-example means over units) / N  (test-set sampling; N − 1 df)
               − residual mean square / (units · N)   (the part V_units already counts; ≥ 0)
The interval is Banerjee's (1961) for a sum of independent variance estimates: half-width
sqrt(Σ t²_{df_i} · V_i), each part scaled by its own Student t quantile (scipy.special.stdtrit);
p is the level at which it just reaches 0. Unlike Satterthwaite's df (whose estimate rises
exactly when the few-cluster term is underestimated: liberal, 2-17x alpha at 2 searches and
Holm's small levels), it is conservative for every ratio of the parts, and with one part it is
Student's t. A paired comparison (same units: same search index, same seed) works on the
difference matrix; an unpaired one (tuned vs default settings) adds both optimizers' unit parts
and keeps the per-example pairing, without removing the overlap (conservative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

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
    df: float = math.nan  # effective: the t whose 95% quantile gives the interval's half-width
    note: str = ""
    parts: tuple[tuple[float, float], ...] = ()  # (variance, df) per noise source

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


def half_width(parts: tuple[tuple[float, float], ...], alpha: float) -> float:
    """Banerjee's two-sided half-width at level alpha: sqrt(Σ t²_{1−α/2, df} · v)."""
    return math.sqrt(sum(v * special.stdtrit(df, alpha / 2) ** 2 for v, df in parts))


def _p_value(value: float, parts: tuple[tuple[float, float], ...]) -> float:
    """The alpha at which the half-width equals |value| (it falls as alpha rises)."""
    if value == 0:
        return 1.0

    def gap(log_alpha: float) -> float:
        return half_width(parts, math.exp(log_alpha)) - abs(value)

    lowest = math.log(1e-100)  # below it p reads 0
    if gap(lowest) < 0:
        return 0.0
    return math.exp(optimize.brentq(gap, lowest, 0.0, xtol=1e-9))


def _effective_df(parts: tuple[tuple[float, float], ...], se: float) -> float:
    """The df of the one t whose 95% quantile equals half-width / se (for the tables)."""
    ratio = half_width(parts, 1 - LEVEL) / se
    low = min(df for _, df in parts)
    if ratio <= stats.norm.isf((1 - LEVEL) / 2) * (1 + 1e-12):
        return math.inf
    if ratio >= special.stdtrit(low, 1 - (1 - LEVEL) / 2):
        return low

    def gap(log_df: float) -> float:
        return special.stdtrit(math.exp(log_df), 1 - (1 - LEVEL) / 2) - ratio

    return math.exp(optimize.brentq(gap, math.log(low), math.log(1e12), xtol=1e-6))


def _t_test(value: float, terms: list[tuple[float, float]], n_units: int) -> Test:
    parts = tuple((v, df) for v, df in terms if v > 0)
    if not parts:  # no spread at all: identical runs, or a constant difference
        if value == 0:
            return Test(0.0, p=1.0, note="no spread: the runs are identical")
        # every unit and example moves the same way: the sign test's smallest p over the units
        p = stats.binomtest(n_units, n_units).pvalue if n_units else math.nan
        return Test(value, p=float(p), note="no spread: a constant difference (sign test)")
    se = math.sqrt(sum(v for v, _ in parts))
    h = half_width(parts, 1 - LEVEL)
    df = _effective_df(parts, se)
    return Test(value, value - h, value + h, _p_value(value, parts), se, df, parts=parts)


def _examples_part(d: np.ndarray) -> tuple[float, float]:
    """The test-set part of a paired matrix: the per-example term less the overlap."""
    v, df = _example_term(d.mean(axis=0))
    return max(v - _overlap(d), 0.0), df


def mean(a: Units) -> Test:
    """The headline: the optimizer's accuracy over searches, seeds and test examples."""
    if len(a.correct) == 0:
        return Test(math.nan, note="no replicate")
    terms = [_unit_term(a.correct, a.clusters), _examples_part(a.correct)]
    return _t_test(float(a.correct.mean()), terms, len(a.correct))


def difference(a: Units, b: Units) -> Test:
    """a − b, paired on the units when both have the same ones (search index and seed), else
    unpaired at the unit level (still paired per test example; e.g. tuned vs default)."""
    if len(a.correct) == 0 or len(b.correct) == 0 or a.correct.shape[1] != b.correct.shape[1]:
        return Test(math.nan, note="no results to compare")
    if set(a.keys) == set(b.keys):
        ib = [b.keys.index(k) for k in a.keys]
        d = a.correct - b.correct[ib]
        terms = [_unit_term(d, a.clusters), _examples_part(d)]
        return _t_test(float(d.mean()), terms, len(d))
    terms = [_unit_term(a.correct, a.clusters), _unit_term(b.correct, b.clusters)]
    terms.append(_example_term(a.correct.mean(axis=0) - b.correct.mean(axis=0)))
    value = float(a.correct.mean() - b.correct.mean())
    return _t_test(value, terms, min(len(a.correct), len(b.correct)))


def smallest_detectable(t: Test, family: int) -> float:
    """The difference this budget detects with POWER at the first Holm step (level ALPHA/m):
    Banerjee's half-width at ALPHA/m plus its one-sided quantile at POWER, from the
    comparison's own variance parts (a planning figure; for one part (t_{1−α/2m} + t_power)·se)."""
    if not t.testable or not t.parts:
        return math.nan
    level = ALPHA / max(family, 1)
    return half_width(t.parts, level) + half_width(t.parts, 2 * (1 - POWER))


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
