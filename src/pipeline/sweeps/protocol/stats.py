"""The fair comparison's small statistics besides its test (protocol.inference): Holm's
adjustment, the verdict words, the expected best of k trials, and places with ties.

Pure functions on numpy arrays, built on scipy.stats where a method exists there
(docs/sweeps-and-reports.md, "How the comparison is judged").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
LEVEL = 0.95
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"


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
    if len(scores) < 2 or np.ptp(scores) == 0:  # no spread: the band is the line
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
