"""report.md of a fair comparison: the verdict in words, the ranking, the pairs, per optimizer."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline import PROJECT_ROOT
from pipeline.sweeps.common import fmt_value
from pipeline.sweeps.protocol import stats
from pipeline.sweeps.protocol.analysis import Analysis, Comparison, Row
from pipeline.sweeps.protocol.stats import Estimate

DOCS = "docs/sweeps-and-reports.md#how-the-comparison-is-judged"


def docs_link(folder: Path) -> str:
    """DOCS as a link from a report.md in `folder`: relative inside the checkout (an editor or a
    forge follows it), absolute outside it, the bare path where the docs are absent (a wheel)."""
    page, anchor = (PROJECT_ROOT / DOCS).as_posix().split("#")
    if not Path(page).is_file():
        return DOCS
    folder = Path(folder).resolve()
    inside = folder.is_relative_to(PROJECT_ROOT)
    return f"{os.path.relpath(page, folder) if inside else page}#{anchor}"


def num(x: float | None, signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return "—"
    x = round(x, 4) + 0.0  # a difference that rounds to zero reads +0.0000, not -0.0000
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def est(e: Estimate | None, signed: bool = False) -> str:
    if e is None or math.isnan(e.value):
        return "—"
    if math.isnan(e.low):
        return num(e.value, signed)
    return f"{num(e.value, signed)} [{num(e.low, signed)}, {num(e.high, signed)}]"


def ci(e: Estimate | None) -> str:
    return "—" if e is None or math.isnan(e.low) else f"[{num(e.low, True)}, {num(e.high, True)}]"


def pval(p: float, at_most: bool = False) -> str:
    if math.isnan(p):
        return "—"
    return ("≤ " if at_most else "") + ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


def floored(c: Comparison) -> bool:
    """The test-set p is at the floor of its Monte Carlo sign flips: the exact p may be smaller."""
    return bool(c.samples and c.n_seeds > 1 and c.samples.p <= stats.SIGN_FLIP_FLOOR)


def p_is(c: Comparison) -> str:
    """'= 0.0123', '≤ 0.0012' (at the Monte Carlo floor) or '< 0.0001': the verdict's p."""
    text = pval(c.p, floored(c) and c.p == c.p_samples)
    return "unavailable" if text == "—" else text if text[0] in "≤<" else f"= {text}"


def setting(hp: dict[str, str], keys: list[str]) -> str:
    return ", ".join(f"{k.removeprefix('optimizer.')}={fmt_value(hp[k])}" for k in keys if k in hp)


def reach(points: list[tuple[float, float]], which: int, digits: int) -> str:
    """Median over the replicates (∞ if most never reach), and how many reached."""
    if not points:
        return "—"
    values = [p[which] for p in points]
    median = float(np.median(values))
    text = "∞" if math.isinf(median) else f"{median:,.{digits}f}"
    return f"{text} ({sum(not math.isinf(v) for v in values)}/{len(values)})"


def table(header: str, rows: list[list[str]]) -> list[str]:
    cells = header.split(" | ")
    return [f"| {header} |", "|" + "---|" * len(cells)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def failed_trials(row: Row) -> tuple[int, int]:
    diverged = sum(t.status == "DIVERGED" for t in row.trials)
    return sum(not t.ok for t in row.trials) - diverged, diverged


def tuning_table(rows: list[Row], budget: int) -> list[str]:
    out = []
    for r in rows:
        sel, (failed, diverged) = r.selected, failed_trials(r)
        chosen = setting(sel.hyperparameters, r.tuned_keys) if sel else "none: no trial finished"
        out.append(
            [
                r.name,
                f"{len(r.trials)} / {budget}",
                str(failed),
                str(diverged),
                chosen,
                setting(r.default_hp, r.tuned_keys) or "—",
                num(sel and sel.val_acc()),
            ]
        )
    header = "optimizer | trials run / budget | failed | diverged | selected setting | "
    return table(header + "default setting | selected trial's val acc", out)


def results_table(rows: list[Row], target: float) -> list[str]:
    out = []
    for r in rows:
        spread = r.tuned_test_set and (r.tuned_test_set.high - r.tuned_test_set.low) / 2
        gain = f"{est(r.gain.seeds, True)}: {r.gain.verdict}" if r.gain else "—"
        ok = f"{sum(x.ok for x in r.replicates)}/{len(r.replicates)}"
        out.append(
            [
                r.name,
                est(r.tuned),
                f"± {spread:.4f}" if spread else "—",
                est(r.default),
                gain,
                reach(r.to_target, 0, 0),
                reach(r.to_target, 1, 1),
                ok,
            ]
        )
    header = (
        "optimizer | tuned test acc [95% CI, seeds] | test-set 95% ± | default-settings test "
        f"acc [95% CI] | tuning gain [95% CI, seeds] | steps to val acc ≥ {target:g} | "
        f"seconds to val acc ≥ {target:g} | replicates ok"
    )
    return table(header, out)


def pairwise_table(pairs: list[Comparison]) -> list[str]:
    def word(c: Comparison) -> str:
        return c.verdict if c.verdict == stats.NO_DIFFERENCE else f"**{c.a} {c.verdict}**"

    out = [
        [
            f"{c.a} vs {c.b}",
            num(c.seeds.value, True),
            ci(c.seeds),
            ci(c.samples),
            str(c.n_seeds),
            pval(c.p_seeds),
            pval(c.p_samples, floored(c)),
            word(c),
        ]
        for c in pairs
    ]
    header = "pair | difference | 95% CI over seeds | 95% CI over test samples | seeds | "
    return table(header + "p seeds (Holm) | p test set (Holm) | verdict", out)


def ranking_table(a: Analysis) -> list[str]:
    out = []
    for name in a.order:
        r = a.ranks[name]
        shared = sum(a.ranks[n].rank == r.rank for n in a.order) > 1
        place = str(r.best) if r.best == r.worst else f"{r.best}–{r.worst}"
        cells = [f"{r.rank} (tie)" if shared else str(r.rank), name, est(a.rows[name].tuned)]
        out.append([*cells, place, ", ".join(r.tied_with) or "—"])
    header = "rank | optimizer | tuned test acc [95% CI] | places the verdicts allow | "
    return table(header + "no detectable difference from", out)


def how_sure(a: Analysis, docs: str = DOCS) -> list[str]:
    """The verdict in words: who wins, by how much, how sure; what the intervals cover (`docs`:
    the link to how it is judged)."""
    if not a.order:
        return ["No optimizer has a finished replicate run: there is nothing to compare."]
    rows, top = a.rows, a.order[0]
    n_seeds = max(sum(r.ok for r in rows[n].replicates) for n in a.order)

    def gap(c: Comparison) -> str:
        return (
            f"{c.a} − {c.b} = {num(c.seeds.value, True)} (95% CI over seeds {ci(c.seeds)}, over "
            f"test samples {ci(c.samples)}; p {p_is(c)}, Holm-corrected)"
        )

    against_top = [c for c in a.pairs if top in (c.a, c.b)]
    tied = a.ranks[top].tied_with
    if len(a.order) == 1:
        text = [f"Only {top} has results ({est(rows[top].tuned)}): no comparison."]
    elif a.ranks[top].worst == 1:
        near = min(against_top, key=lambda c: abs(c.seeds.value))
        text = [
            f"**{top} wins.** Its tuned test accuracy is {est(rows[top].tuned)} (95% CI over "
            f"seeds), detectably better than every other optimizer; the closest: {gap(near)}."
        ]
    elif tied:
        far = max(
            (c for c in against_top if {c.a, c.b} & set(tied)), key=lambda c: abs(c.seeds.value)
        )
        text = [
            f"**No single winner.** {top} has the highest mean test accuracy, "
            f"{est(rows[top].tuned)}, but {', '.join(tied)} {'is' if len(tied) == 1 else 'are'} "
            f"not detectably different at 5% family-wise error; "
            f"{'the gap' if len(tied) == 1 else 'the widest such gap'}: {gap(far)}."
        ]
    else:  # pairs on common seeds can disagree with the means over all replicates
        text = ["**No single winner**: the verdicts give no consistent order; see the pairs."]
    gains = [
        f"{n} {num(r.gain.seeds.value, True)} ({r.gain.verdict})" for n, r in rows.items() if r.gain
    ]
    if gains:
        text.append("Tuning bought, over the default settings: " + "; ".join(gains) + ".")
    n_test = next(
        (
            f"{len(r.correct):,}"
            for n in a.order
            for r in rows[n].replicates
            if r.ok and r.correct is not None
        ),
        "?",
    )
    text.append(
        f"Intervals *over seeds* cover training noise (initial weights, data order; {n_seeds} "
        "seeds, Student's t) with the test set held fixed; intervals *over test samples* cover "
        f"the sampling of the {n_test} test samples with the trained models held fixed. A "
        "verdict needs both tests to reject at 5% after Holm's correction over all pairs. "
        "Neither covers the search's own randomness (another search could select another "
        "setting: see the figures), nor other data sets or models. With "
        f"{n_seeds} seeds a Wilcoxon or sign-flip test over seeds cannot go below p = "
        f"{stats.smallest_sign_flip_p(n_seeds):.4g}, so the seed test is the paired t-test "
        f"([how the comparison is judged]({docs}))."
    )
    return text


def warnings_of(a: Analysis) -> list[str]:
    out = []
    for r in a.rows.values():
        if r.mismatch:
            out.append(f"{r.name}: replicates not run with the selected setting: {r.mismatch}")
        if r.selected is None:
            out.append(f"{r.name}: no tuning trial finished, nothing was selected")
        if any(x.ok and x.correct is None for x in r.replicates + r.defaults):
            out.append(f"{r.name}: runs without test_correct.npy: no test-set check for them")
    return out


def failed_runs(a: Analysis) -> list[str]:
    def line(r) -> str:
        trial = f" trial {r.trial}" if r.trial is not None else ""
        hp = setting(r.hyperparameters, a.rows[r.optimizer].tuned_keys)
        where = f"{r.stage} {r.optimizer}{trial} seed {r.seed} ({hp})"
        return f"- {r.status}: {where} `{r.run_id}` {r.error}"

    return [line(r).rstrip() for r in a.protocol.runs if not r.ok and r.optimizer in a.rows]


def markdown(a: Analysis, docs: str = DOCS) -> str:
    p = a.protocol
    rows = [a.rows[n] for n in a.order] + [a.rows[n] for n in p.optimizers if n not in a.order]
    text = [
        f"# Fair comparison {p.protocol_id}",
        "",
        f"MLflow parent run `{p.parent_id}` ({p.name}). {p.context}".rstrip(),
        f"Budget: {p.budget} trials per optimizer, objective `{p.objective}` on the validation "
        f"split, tuning seeds {p.tuning_seeds}; replicates with seeds {p.replicate_seeds}; "
        f"validation target {p.target:g}. Failed and diverged trials count against the budget.",
        "",
        "## Verdict",
        "",
        *[line for t in how_sure(a, docs) for line in (t, "")],
        "## Ranking",
        "",
        *ranking_table(a),
        "",
        "## Pairwise (every pair; the first has the higher mean)",
        "",
        *pairwise_table(a.pairs),
        "",
        f"Intervals are per pair at 95%, not corrected for the {len(a.pairs)} comparisons; the "
        "verdicts use Holm-corrected p-values, so an interval can exclude 0 while the verdict "
        "finds no detectable difference.",
        "",
        "## Per optimizer",
        "",
        *tuning_table(rows, p.budget),
        "",
        *results_table(rows, p.target),
        "",
        "![sensitivity](sensitivity.png)",
        "",
        "![expected best validation accuracy vs trials](expected_best.png)",
        "",
        "![replicate curves](curves.png)",
    ]
    if warnings := warnings_of(a):
        text += ["", "## Warnings", "", *[f"- {w}" for w in warnings]]
    if failed := failed_runs(a):
        text += ["", "## Failed and diverged runs", "", *failed]
    return "\n".join(text) + "\n"
