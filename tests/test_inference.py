"""The one test per comparison (pipeline.sweeps.protocol.inference): against scipy where it
reduces to a textbook test, and a defined answer at every edge (no nan, no crash)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.sweeps.protocol import inference, simulate
from pipeline.sweeps.protocol.analysis import NO_TEST, analyse
from pipeline.sweeps.protocol.inference import Units


def units(matrix, clusters=None, searches=None) -> Units:
    m = np.atleast_2d(np.asarray(matrix, dtype=float))
    clusters = np.arange(len(m)) if clusters is None else np.asarray(clusters)
    searches = searches or [0] * len(m)
    return Units(m, clusters, tuple((s, i) for i, s in enumerate(searches)))


def test_accuracies_only_reduce_to_the_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.9, 0.01, 6), rng.normal(0.89, 0.01, 6)
    t = inference.difference(units(a[:, None]), units(b[:, None]))
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval()
    assert t.p == pytest.approx(ref.pvalue) and t.df == 5
    assert (t.low, t.high) == pytest.approx((ci.low, ci.high))


def test_one_run_each_reduces_to_a_t_test_over_examples():
    rng = np.random.default_rng(1)
    a, b = rng.random(400) < 0.9, rng.random(400) < 0.85
    t = inference.difference(units(a), units(b))
    ref = stats.ttest_1samp(a.astype(float) - b, 0.0)
    assert t.p == pytest.approx(ref.pvalue) and t.df == 399


def test_searches_are_the_clusters_when_there_are_several():
    """Three searches of two seeds: effective df at least the searches' 2, below the seeds'."""
    rng = np.random.default_rng(2)
    shift = np.repeat(rng.normal(0, 0.05, 3), 2)[:, None]  # a search moves its seeds together
    a = (rng.random((6, 3000)) < 0.88 + shift).astype(float)
    grouped = inference.mean(units(a, clusters=[0, 0, 1, 1, 2, 2], searches=[0, 0, 1, 1, 2, 2]))
    naive = inference.mean(units(a))
    assert 1.99 < grouped.df < naive.df and grouped.high - grouped.low > naive.high - naive.low


def test_identical_runs_claim_no_interval():
    a = units(np.tile(np.random.default_rng(3).random(50) < 0.9, (5, 1)))
    t = inference.difference(a, a)
    assert t.p == 1.0 and math.isnan(t.low) and t.note.startswith("no spread")


def test_a_constant_difference_has_a_p_not_nan():
    a, b = units(np.full((5, 1), 0.91)), units(np.full((5, 1), 0.90))  # +0.01 on every seed
    t = inference.difference(a, b)
    assert t.p == pytest.approx(2 / 2**5) and t.note.endswith("(sign test)")


def test_probability_of_improvement():
    a, b = units(np.array([[0.9], [0.8], [0.7]])), units(np.array([[0.85], [0.75], [0.95]]))
    assert inference.probability_of_improvement(a, b).value == pytest.approx(3 / 9)
    p = inference.probability_of_improvement(
        units(np.linspace(0.90, 0.91, 6)[:, None], [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),
        units(np.linspace(0.80, 0.81, 6)[:, None], [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),
    )
    assert p.value == 1 and p.low == p.high == 1


def test_smallest_detectable_shrinks_with_the_budget():
    rng = np.random.default_rng(4)
    small = inference.difference(units(rng.normal(0.9, 0.01, (4, 1))), units(np.full((4, 1), 0.9)))
    large = inference.difference(
        units(rng.normal(0.9, 0.01, (20, 1))), units(np.full((20, 1), 0.9))
    )
    assert inference.smallest_detectable(large, 15) < inference.smallest_detectable(small, 15)


def test_two_seeds_and_a_test_set_that_barely_differs_get_a_verdict():
    """Issue 25 case 7: two seeds, two test batches, the models agree on all but one example."""
    world = simulate.World(n_test=8, difficulty=0.0, interaction=0.0, logit=8.0)
    protocol = simulate.protocol(world, {"a": 0, "b": 0}, 1, 2, np.random.default_rng(5))
    a = analyse(protocol)
    [pair] = a.pairs
    assert pair.verdict in ("no detectable difference", NO_TEST) and not math.isnan(pair.p)


def test_failed_replicates_count_as_chance_not_dropped():
    world = simulate.World(n_test=200)
    protocol = simulate.protocol(world, {"a": 0}, 1, 10, np.random.default_rng(6), failed=0.3)
    row = analyse(protocol).rows["a"]
    failed = [r for r in row.replicates if not r.ok]
    ok = [r.test_acc for r in row.replicates if r.ok]
    assert failed and row.units.correct.shape[0] == 10
    expected = (sum(ok) + inference.CHANCE * len(failed)) / 10
    assert row.tuned.value == pytest.approx(expected)


def replicates(protocol):
    return [r for r in protocol.runs if r.stage == "replicate"]


def test_identical_seeds_through_analyse_give_an_interval_from_the_test_set():
    """Every replicate of an optimizer the same run: no seed spread; the test set's remains."""
    world = simulate.World(n_test=300)
    protocol = simulate.protocol(world, {"a": 0, "b": 0}, 2, 5, np.random.default_rng(7))
    for name in ("a", "b"):
        runs = [r for r in replicates(protocol) if r.optimizer == name]
        for r in runs[1:]:
            r.correct, r.test_acc = runs[0].correct, runs[0].test_acc
    a = analyse(protocol)
    [pair] = a.pairs
    assert pair.test.testable and pair.test.low < pair.test.value < pair.test.high
    assert 0 < pair.p <= 1 and pair.verdict in ("better", "worse", "no detectable difference")
    for row in a.rows.values():
        assert row.tuned.low < row.tuned.value < row.tuned.high


def test_a_constant_difference_through_analyse_is_better_not_nan():
    """Accuracies only, a ahead of b by exactly 0.01 on every (search, seed): the sign test."""
    world = simulate.World(n_test=50)
    protocol = simulate.protocol(world, {"a": 0, "b": 0}, 2, 5, np.random.default_rng(8))
    for r in replicates(protocol):
        r.correct, r.test_acc = None, 0.91 if r.optimizer == "a" else 0.90
    [pair] = analyse(protocol).pairs
    assert pair.test.note.endswith("(sign test)") and pair.p == pytest.approx(2 / 2**10)
    assert (pair.a, pair.verdict) == ("a", "better")


def test_all_replicates_diverged_count_as_chance():
    world = simulate.World(n_test=200)
    protocol = simulate.protocol(world, {"a": 0, "b": 0}, 3, 4, np.random.default_rng(9))
    for r in replicates(protocol):
        if r.optimizer == "b":
            r.status, r.correct = "DIVERGED", None
    a = analyse(protocol)
    [pair] = a.pairs
    assert a.rows["b"].tuned.value == pytest.approx(inference.CHANCE)
    assert (pair.a, pair.verdict) == ("a", "better") and pair.p < 0.01


@pytest.mark.parametrize("seeds", [1, 3])
def test_one_search_gives_a_defined_answer(seeds):
    """One search: clusters are the seeds; one seed each: a t-test over the test examples."""
    world = simulate.World(n_test=300, sd_search=0.0)
    protocol = simulate.protocol(world, {"a": 0, "b": 0.3}, 1, seeds, np.random.default_rng(10))
    a = analyse(protocol)
    [pair] = a.pairs
    assert pair.test.testable and not math.isnan(pair.p) and not math.isnan(pair.detectable)
    assert all(not math.isnan(r.tuned.low) for r in a.rows.values())


def test_one_optimizer_without_per_example_results_puts_every_pair_on_accuracies():
    """Runs recorded before test_correct.npy existed: every pair still gets a test."""
    world = simulate.World(n_test=200)
    protocol = simulate.protocol(world, {"a": 0, "b": 0, "c": 0}, 1, 5, np.random.default_rng(11))
    for r in replicates(protocol):
        if r.optimizer == "c":
            r.correct = None
    a = analyse(protocol)
    assert all(c.test.testable and not math.isnan(c.p) for c in a.pairs)
    assert {r.units.correct.shape[1] for r in a.rows.values()} == {1}
