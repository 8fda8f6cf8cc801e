"""The numbers of a fair comparison: selection by validation, replicates, pairwise verdicts.

- Selection: per optimizer and search, the tuning trial with the best objective (mean over its
  tuning seeds); a trial with any failed or diverged run is never selected but counts against
  the budget. Test accuracies of tuning trials are not looked at.
- Results: the replicate runs (each search's selection on fresh seeds) and the default-settings
  runs. A failed or diverged replicate counts, as chance accuracy (inference.CHANCE) on every
  test example; a run still RUNNING or KILLED is not a result and is left out (and listed).
- One test per comparison over searches, seeds and test examples (inference.py); Holm once
  over all k(k − 1)/2 pairs (the confirmatory family: verdicts, places, compare-to-best), and
  separately over the tuning gains (an exploratory family, labelled so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from pipeline.sweeps.common import reaches
from pipeline.sweeps.protocol import inference, stats
from pipeline.sweeps.protocol.inference import CHANCE, Test, Units
from pipeline.sweeps.protocol.runs import Protocol, Run, lower_is_better, objective_value
from pipeline.training.probe import ACC_KEY as PROBE_ACC
from pipeline.training.probe import TIME_KEY as PROBE_TIME


@dataclass
class Trial:
    number: int
    runs: list[Run]
    search: int = 0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    @property
    def status(self) -> str:
        bad = [r.status for r in self.runs if not r.ok]
        return "ok" if not bad else ("DIVERGED" if "DIVERGED" in bad else bad[0])

    @property
    def hyperparameters(self) -> dict[str, str]:
        return self.runs[0].hyperparameters

    def score(self, objective: str) -> float:
        return float(np.mean([objective_value(r, objective) for r in self.runs]))

    def val_acc(self) -> float:
        """Mean over its tuning seeds of the best epoch's validation accuracy."""
        return float(np.mean([r.best_val_acc() for r in self.runs]))


def trials_of(runs: list[Run]) -> list[Trial]:
    """Trials by (search, number): each search numbers its own trials from 0."""
    keys = sorted(
        {(r.search, r.trial) for r in runs}, key=lambda k: (k[0], k[1] is None, k[1] or 0)
    )
    return [
        Trial(n if n is not None else -1, [r for r in runs if (r.search, r.trial) == (s, n)], s)
        for s, n in keys
    ]


def select(trials: list[Trial], objective: str) -> Trial | None:
    """The best complete trial by the objective; ties go to the earlier trial."""
    sign = -1 if lower_is_better(objective) else 1
    scored = [(t, sign * t.score(objective)) for t in trials if t.ok]
    scored = [(t, s) for t, s in scored if not math.isnan(s)]
    return max(scored, key=lambda ts: (ts[1], -ts[0].number))[0] if scored else None


NO_TEST = "cannot test"
FAILED = ("FAILED", "DIVERGED")  # results that count, as chance accuracy


@dataclass
class Comparison:
    a: str
    b: str
    test: Test  # a − b over searches, seeds and test examples
    improve: Test  # P(a > b) over runs
    units: int  # replicate runs per side (paired when both have them)
    p: float = math.nan  # Holm-corrected within its family
    verdict: str = stats.NO_DIFFERENCE
    detectable: float = math.nan  # the smallest difference this budget detects (80% power)


def common_length(runs: list[Run]) -> int | None:
    """The test set's length when every finished run has per-example correctness of one length
    (over every optimizer's replicates: one optimizer's old runs without it put all on accuracies,
    so that every pair is compared the same way)."""
    lengths = {len(r.correct) if r.correct is not None else -1 for r in runs if r.ok}
    return lengths.pop() if len(lengths) == 1 and -1 not in lengths else None


def units_of(runs: list[Run], n_test: int | None) -> Units:
    """The runs that are results (finished, failed, diverged), as a Units matrix. Per-example
    correctness where every finished run has it, of length `n_test` (the protocol's
    `common_length`: an optimizer whose every replicate failed still pairs per example), else
    (None, or a run without it) one column of test accuracies."""
    runs = sorted(
        (r for r in runs if r.ok or r.status in FAILED), key=lambda r: (r.search, r.seed or 0)
    )
    per_example = n_test is not None and all(
        r.correct is not None and len(r.correct) == n_test for r in runs if r.ok
    )
    n = n_test if per_example else 1

    def row(r: Run) -> np.ndarray:
        if not r.ok:
            return np.full(n, CHANCE)
        return r.correct.astype(float) if per_example else np.array([r.test_acc])

    searches = sorted({r.search for r in runs})
    clusters = [r.search if len(searches) > 1 else i for i, r in enumerate(runs)]
    return Units(
        np.stack([row(r) for r in runs]) if runs else np.zeros((0, n)),
        np.asarray(clusters, dtype=int),
        tuple((r.search, r.seed if r.seed is not None else -1) for r in runs),
    )


def compare(a: str, b: str, units_a: Units, units_b: Units) -> Comparison:
    test = inference.difference(units_a, units_b)
    improve = inference.probability_of_improvement(units_a, units_b)
    return Comparison(a, b, test, improve, min(len(units_a.keys), len(units_b.keys)))


def judge(family: list[Comparison]) -> None:
    """Holm over the family; verdicts; the smallest detectable difference at its size."""
    for c, p in zip(family, stats.holm([c.test.p for c in family]), strict=True):
        c.p = float(p) if not math.isnan(c.test.p) else math.nan
        c.verdict = stats.verdict(c.test.value, c.p) if not math.isnan(c.p) else NO_TEST
        c.detectable = inference.smallest_detectable(c.test, len(family))


def to_target(run: Run, target: float) -> tuple[float, float]:
    """Optimizer steps and training seconds until the validation accuracy first reaches the
    target (∞: never). Steps count the optimizer steps taken (a metric's step + 1).

    With the step probe (training.probe, `probe.every_n_steps` > 0): the first probe/val_acc
    at or above the target, seconds its probe/train_time_s. Without it (probe off, or runs
    recorded before it): the first epoch's val/acc, seconds the sum of epoch_time_s up to it;
    every optimizer's answer is then a whole number of epochs."""
    if probe := run.curves.get(PROBE_ACC):
        seconds = dict(run.curves.get(PROBE_TIME, []))
        for step, value in probe:
            if reaches(value, target):
                return float(step + 1), seconds.get(step, math.nan)
        return math.inf, math.inf
    times = [t for _, t in run.curves["epoch_time_s"]]
    for i, (step, value) in enumerate(run.curves["val/acc"]):
        if reaches(value, target):
            return float(step + 1), float(sum(times[: i + 1])) if len(times) > i else math.nan
    return math.inf, math.inf


@dataclass
class Row:
    """One optimizer."""

    name: str
    trials: list[Trial]
    selections: dict[int, Trial | None]  # per search
    tuned_keys: list[str]  # hyperparameters that differ between its trials
    default_hp: dict[str, str]
    replicates: list[Run]
    defaults: list[Run]
    units: Units | None = None  # the replicates as results
    tuned: Test = field(default_factory=lambda: Test(math.nan))  # over every noise source
    default: Test = field(default_factory=lambda: Test(math.nan))
    gain: Comparison | None = None  # tuned − default (exploratory family)
    to_target: list[tuple[float, float]] = field(default_factory=list)
    mismatch: str = ""  # replicates that did not run their search's selected setting

    @property
    def selected(self) -> Trial | None:
        """The first search's selection (the figures ring it)."""
        return next((t for t in self.selections.values() if t), None)


def optimizer_row(protocol: Protocol, name: str) -> Row:
    trials = trials_of(protocol.of("tune", name))
    searches = sorted({t.search for t in trials} | set(range(protocol.searches)))
    selections = {
        s: select([t for t in trials if t.search == s], protocol.objective) for s in searches
    }
    keys = sorted({k for t in trials for k in t.hyperparameters})
    tuned_keys = [k for k in keys if len({t.hyperparameters.get(k) for t in trials}) > 1]
    tuned_keys = tuned_keys or [k for k in keys if k.endswith(".lr")]
    replicates, defaults = protocol.of("replicate", name), protocol.of("default", name)
    row = Row(name, trials, selections, tuned_keys, {}, replicates, defaults)
    if defaults:
        row.default_hp = defaults[0].hyperparameters
    n_test = common_length([r for r in protocol.runs if r.stage == "replicate"])
    row.units = units_of(replicates, n_test)
    row.tuned = inference.mean(row.units)
    default_units = units_of(defaults, n_test)
    row.default = inference.mean(default_units)
    if len(row.units.keys) and len(default_units.keys):
        row.gain = compare(name, f"{name} (default)", row.units, default_units)
    row.to_target = [to_target(r, protocol.target) for r in replicates if r.ok]
    wrong = [
        r.name
        for r in replicates
        if (sel := selections.get(r.search))
        and any(r.hyperparameters.get(k) != sel.hyperparameters.get(k) for k in tuned_keys)
    ]
    row.mismatch = ", ".join(wrong)
    return row


@dataclass
class Analysis:
    protocol: Protocol
    rows: dict[str, Row]
    pairs: list[Comparison]  # every pair, one Holm family
    ranks: dict[str, stats.Rank]
    order: list[str]  # ranked optimizers, best mean first; those without results left out

    @property
    def to_best(self) -> list[Comparison]:
        """Compare-to-best: the best mean against each other optimizer (the verdict's line)."""
        return [c for c in self.pairs if self.order and self.order[0] in (c.a, c.b)]


def analyse(protocol: Protocol) -> Analysis:
    rows = {name: optimizer_row(protocol, name) for name in protocol.optimizers}
    order = sorted(
        (n for n, r in rows.items() if not math.isnan(r.tuned.value)),
        key=lambda n: -rows[n].tuned.value,
    )
    pairs = [compare(a, b, rows[a].units, rows[b].units) for a, b in combinations(order, 2)]
    judge(pairs)
    judge([r.gain for r in rows.values() if r.gain])
    beats = {(c.a, c.b) for c in pairs if c.verdict == stats.BETTER}
    beats |= {(c.b, c.a) for c in pairs if c.verdict == stats.WORSE}
    return Analysis(protocol, rows, pairs, stats.rank_with_ties(order, beats), order)
