"""The numbers of a fair comparison: selection by validation, replicates, pairwise verdicts.

- Selection: per optimizer, the tuning trial with the best objective (mean over its tuning
  seeds); a trial with any failed or diverged run is never selected but counts against the
  budget. Test accuracies of tuning trials are not looked at.
- Results: the replicate runs (fresh seeds, selected setting) and the default-settings runs.
- A comparison pairs runs by seed. Its verdict needs two keys, each Holm-corrected over its
  family: the paired t-test over seeds (seed noise) and the per-sample test over the shared
  test set (test-set noise). The verdict's p is the larger of the two (intersection-union).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from pipeline.sweeps.common import reaches
from pipeline.sweeps.protocol import stats
from pipeline.sweeps.protocol.runs import Protocol, Run, lower_is_better, objective_value
from pipeline.sweeps.protocol.stats import Estimate


@dataclass
class Trial:
    number: int
    runs: list[Run]

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
    numbers = sorted({r.trial for r in runs}, key=lambda n: (n is None, n or 0))
    return [Trial(n if n is not None else -1, [r for r in runs if r.trial == n]) for n in numbers]


def select(trials: list[Trial], objective: str) -> Trial | None:
    """The best complete trial by the objective; ties go to the earlier trial."""
    sign = -1 if lower_is_better(objective) else 1
    scored = [(t, sign * t.score(objective)) for t in trials if t.ok]
    scored = [(t, s) for t, s in scored if not math.isnan(s)]
    return max(scored, key=lambda ts: (ts[1], -ts[0].number))[0] if scored else None


@dataclass
class Comparison:
    a: str
    b: str
    n_seeds: int
    seeds: Estimate  # a − b over paired seeds
    samples: Estimate | None  # a − b over the test samples (None without test_correct.npy)
    p_seeds: float = math.nan  # Holm-corrected within its family
    p_samples: float = math.nan
    p: float = math.nan  # the verdict's: the larger of the two
    verdict: str = stats.NO_DIFFERENCE


def compare(a: str, b: str, runs_a: list[Run], runs_b: list[Run]) -> Comparison:
    by_seed_a = {r.seed: r for r in runs_a if r.ok and r.seed is not None}
    by_seed_b = {r.seed: r for r in runs_b if r.ok and r.seed is not None}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    pa, pb = [by_seed_a[s] for s in seeds], [by_seed_b[s] for s in seeds]
    seed_est = stats.paired_seeds([r.test_acc for r in pa], [r.test_acc for r in pb])
    samples = None
    correct = [r.correct for r in pa + pb]
    if seeds and all(c is not None and len(c) == len(correct[0]) for c in correct):
        samples = stats.paired_samples(
            np.stack(correct[: len(seeds)]), np.stack(correct[len(seeds) :])
        )
    return Comparison(a, b, len(seeds), seed_est, samples)


def judge(family: list[Comparison]) -> None:
    """Holm over the family, for each key; then the two-key verdict."""
    p_seeds = stats.holm([c.seeds.p for c in family])
    p_samples = stats.holm([c.samples.p if c.samples else math.nan for c in family])
    for c, ps, pt in zip(family, p_seeds, p_samples, strict=True):
        c.p_seeds = float(ps)
        c.p_samples = float(pt) if c.samples else math.nan
        c.p = max(c.p_seeds, c.p_samples) if c.samples else c.p_seeds
        c.verdict = stats.verdict(c.seeds.value, c.p)


def to_target(run: Run, target: float) -> tuple[float, float]:
    """Optimizer steps and training seconds until val/acc first reaches the target (∞: never).

    Seconds: the sum of epoch_time_s over the epochs up to that validation."""
    times = [t for _, t in run.curves["epoch_time_s"]]
    for i, (step, value) in enumerate(run.curves["val/acc"]):
        if reaches(value, target):
            return float(step), float(sum(times[: i + 1])) if len(times) > i else math.nan
    return math.inf, math.inf


@dataclass
class Row:
    """One optimizer."""

    name: str
    trials: list[Trial]
    selected: Trial | None
    tuned_keys: list[str]  # hyperparameters that differ between its trials
    default_hp: dict[str, str]
    replicates: list[Run]
    defaults: list[Run]
    tuned: Estimate = field(default_factory=lambda: Estimate(math.nan))
    tuned_test_set: Estimate | None = None  # over the test samples, seed-averaged correctness
    default: Estimate = field(default_factory=lambda: Estimate(math.nan))
    gain: Comparison | None = None  # tuned − default
    to_target: list[tuple[float, float]] = field(default_factory=list)
    mismatch: str = ""  # replicates that did not run the selected setting


def optimizer_row(protocol: Protocol, name: str) -> Row:
    trials = trials_of(protocol.of("tune", name))
    selected = select(trials, protocol.objective)
    keys = sorted({k for t in trials for k in t.hyperparameters})
    tuned_keys = [k for k in keys if len({t.hyperparameters.get(k) for t in trials}) > 1]
    tuned_keys = tuned_keys or [k for k in keys if k.endswith(".lr")]
    replicates, defaults = protocol.of("replicate", name), protocol.of("default", name)
    row = Row(name, trials, selected, tuned_keys, {}, replicates, defaults)
    if defaults:
        row.default_hp = defaults[0].hyperparameters
    ok = [r for r in replicates if r.ok]
    row.tuned = stats.mean_ci([r.test_acc for r in ok])
    if ok and all(r.correct is not None for r in ok):
        row.tuned_test_set = stats.mean_ci(np.mean([r.correct for r in ok], axis=0))
    row.default = stats.mean_ci([r.test_acc for r in defaults if r.ok])
    if ok and any(r.ok for r in defaults):
        row.gain = compare(name, f"{name} (default)", replicates, defaults)
    row.to_target = [to_target(r, protocol.target) for r in ok]
    if selected:
        wrong = [
            r.name
            for r in replicates
            if any(r.hyperparameters.get(k) != selected.hyperparameters.get(k) for k in tuned_keys)
        ]
        row.mismatch = ", ".join(wrong)
    return row


@dataclass
class Analysis:
    protocol: Protocol
    rows: dict[str, Row]
    pairs: list[Comparison]
    ranks: dict[str, stats.Rank]
    order: list[str]  # ranked optimizers, best mean first; those without results left out


def analyse(protocol: Protocol) -> Analysis:
    rows = {name: optimizer_row(protocol, name) for name in protocol.optimizers}
    order = sorted(
        (n for n, r in rows.items() if not math.isnan(r.tuned.value)),
        key=lambda n: -rows[n].tuned.value,
    )
    pairs = [
        compare(a, b, rows[a].replicates, rows[b].replicates) for a, b in combinations(order, 2)
    ]
    judge(pairs)
    judge([r.gain for r in rows.values() if r.gain])
    beats = {(c.a, c.b) for c in pairs if c.verdict == stats.BETTER}
    beats |= {(c.b, c.a) for c in pairs if c.verdict == stats.WORSE}
    return Analysis(protocol, rows, pairs, stats.rank_with_ties(order, beats), order)
