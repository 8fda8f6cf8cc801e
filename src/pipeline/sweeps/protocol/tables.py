"""report.md of a fair comparison: the verdict in words, the ranking, the pairs, per optimizer."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline import PROJECT_ROOT
from pipeline.sweeps.common import fmt_value
from pipeline.sweeps.protocol import stats
from pipeline.sweeps.protocol.analysis import FAILED, NO_TEST, Analysis, Comparison, Row
from pipeline.sweeps.protocol.inference import CHANCE, Test

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


def est(e: Test | None, signed: bool = False) -> str:
    if e is None or math.isnan(e.value):
        return "—"
    if math.isnan(e.low):
        return num(e.value, signed)
    return f"{num(e.value, signed)} [{num(e.low, signed)}, {num(e.high, signed)}]"


def ci(e: Test | None) -> str:
    return "—" if e is None or math.isnan(e.low) else f"[{num(e.low, True)}, {num(e.high, True)}]"


def pval(p: float, at_most: bool = False) -> str:
    if math.isnan(p):
        return "—"
    return ("≤ " if at_most else "") + ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


def setting(hp: dict[str, str], keys: list[str]) -> str:
    return ", ".join(f"{k.removeprefix('optimizer.')}={fmt_value(hp[k])}" for k in keys if k in hp)


def reach(points: list[tuple[float, float]], which: int, digits: int) -> str:
    """Median over the replicates ('not reached' if most never reach), and how many reached."""
    if not points:
        return "—"
    values = [p[which] for p in points]
    median = float(np.median(values))
    text = "not reached" if math.isinf(median) else f"{median:,.{digits}f}"
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
    """One line per optimizer; with several searches, each search's selection in turn."""
    out = []
    for r in rows:
        failed, diverged = failed_trials(r)
        many = len(r.selections) > 1
        chosen = [
            (f"{s}: " if many else "")
            + (setting(t.hyperparameters, r.tuned_keys) if t else "none: no trial finished")
            for s, t in r.selections.items()
        ]
        vals = [num(t and t.val_acc()) for t in r.selections.values()]
        out.append(
            [
                r.name,
                f"{len(r.trials)} / {budget * max(1, len(r.selections))}",
                str(failed),
                str(diverged),
                "; ".join(chosen),
                setting(r.default_hp, r.tuned_keys) or "—",
                ", ".join(vals),
            ]
        )
    header = "optimizer | trials run / budget | failed | diverged | selected setting | "
    return table(header + "default setting | selected trial's val acc", out)


def covers(a: Analysis) -> str:
    """What the intervals cover, for the column headers."""
    return "searches, seeds, test examples" if a.protocol.searches > 1 else "seeds, test examples"


def results_table(a: Analysis, rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        gain = f"{est(r.gain.test, True)}: {r.gain.verdict}" if r.gain else "—"
        ok = f"{sum(x.ok for x in r.replicates)}/{len(r.replicates)}"
        out.append(
            [
                r.name,
                est(r.tuned),
                est(r.default),
                gain,
                reach(r.to_target, 0, 0),
                reach(r.to_target, 1, 2),  # an epoch of Fashion-MNIST is ~1 s
                ok,
            ]
        )
    t = a.protocol.target
    header = (
        f"optimizer | tuned test acc [95% CI over {covers(a)}] | default-settings test acc "
        "[95% CI over seeds, test examples] | tuning gain [95% CI] (exploratory) | "
        f"steps to val acc ≥ {t:g} | seconds to val acc ≥ {t:g} | replicates finished"
    )
    return table(header, out) + ["", reach_note(a)]


def reach_note(a: Analysis) -> str:
    """What steps and seconds to target measure (training.probe; analysis.to_target)."""
    t, probe = a.protocol.target, a.protocol.probe
    if probe is None:
        how = (
            f"the first epoch whose validation accuracy is ≥ {t:g} (no step probe recorded: "
            "epoch resolution, set probe.every_n_steps for steps)"
        )
    else:
        how = (
            f"the first step probe ≥ {t:g}: accuracy on the first {probe[1]:,} validation "
            f"examples every {probe[0]:,} optimizer steps"
        )
    return (
        f"Steps and seconds to target: {how}; seconds of training, validation excluded. "
        "Median over the finished replicates (how many reached it); 'not reached' when most "
        "did not."
    )


def pairwise_table(pairs: list[Comparison]) -> list[str]:
    def word(c: Comparison) -> str:
        if c.verdict in (stats.BETTER, stats.WORSE):
            return f"**{c.a} {c.verdict}**"
        return c.verdict + (f" ({c.test.note})" if c.test.note else "")

    out = [
        [
            f"{c.a} vs {c.b}",
            num(c.test.value, True),
            ci(c.test),
            est(c.improve),
            str(c.units),
            pval(c.p),
            num(c.detectable),
            word(c),
        ]
        for c in pairs
    ]
    header = "pair | difference | 95% CI | P(first > second) [95% CI] | runs each | "
    return table(header + "p (Holm, all pairs) | detectable at 80% power | verdict", out)


def ranking_table(a: Analysis) -> list[str]:
    out = []
    for name in a.order:
        r = a.ranks[name]
        place = str(r.best) if r.best == r.worst else f"{r.best}–{r.worst}"
        out.append([place, name, est(a.rows[name].tuned), ", ".join(r.tied_with) or "—"])
    header = f"places the verdicts allow | optimizer | tuned test acc [95% CI over {covers(a)}]"
    return table(header + " | no detectable difference from", out)


def how_sure(a: Analysis, docs: str = DOCS) -> list[str]:
    """The verdict in words: compare-to-best first; what the intervals cover; the rules (`docs`:
    the link to how it is judged)."""
    if not a.order:
        return ["No optimizer has a replicate run: there is nothing to compare."]
    rows, top, p = a.rows, a.order[0], a.protocol

    def line(c: Comparison) -> str:
        other = c.b if c.a == top else c.a
        sign = 1 if c.a == top else -1
        ends = sorted((sign * c.test.low, sign * c.test.high))
        diff = Test(sign * c.test.value, *ends)
        words = {stats.BETTER: "better", stats.WORSE: "worse"}
        if c.verdict in words:
            verdict = f"{top} {words[c.verdict] if sign > 0 else 'better'}"
        elif c.verdict == NO_TEST:
            verdict = f"cannot test ({c.test.note})"
        else:
            verdict = f"not detectably different; a difference below ~{num(c.detectable)} would "
            verdict += "likely go unseen"
        return f"- vs {other}: {est(diff, True)}, p {pval(c.p)}: {verdict}."

    if len(a.order) == 1:
        text = [f"Only {top} has results ({est(rows[top].tuned)}): no comparison."]
    elif a.ranks[top].worst == 1:
        text = [f"**{top} wins**: detectably better than every other optimizer."]
    else:
        tied = a.ranks[top].tied_with
        text = [
            f"**No single winner.** {top} has the highest mean test accuracy, but "
            f"{', '.join(tied) or 'not all others'} cannot be told apart from it."
        ]
    text[0] += f" Tuned test accuracy {est(rows[top].tuned)}."
    if len(a.order) > 1:
        text.append(
            f"Compare-to-best: {top} against each other optimizer ({top} − other [95% CI]; "
            f"p Holm-adjusted over all {len(a.pairs)} pairs, valid though the best is picked "
            "from the data):"
        )
        text.append("\n".join(line(c) for c in a.to_best))
    gains = [f"{n} {est(r.gain.test, True)} ({r.gain.verdict})" for n, r in rows.items() if r.gain]
    if gains:
        text.append(
            "Tuning bought, over the default settings (an exploratory family, Holm-corrected "
            "on its own): " + "; ".join(gains) + "."
        )
    searches = (
        f"{p.searches} independent searches of {p.budget} trials per optimizer"
        if p.searches > 1
        else "one search per optimizer: the intervals hold its selection fixed (another "
        "search could select another setting; run hydra.sweeper.searches ≥ 3 to cover it)"
    )
    text.append(
        f"Each interval and test covers {covers(a)} together ({searches}; "
        "a crossed variance decomposition, each part with its own t quantile: Banerjee's "
        "interval). One Holm "
        f"family over all {len(a.pairs)} pairs at 5% family-wise error gives the verdicts and "
        "places; P(first > second) is over runs, the test set fixed (rliable). Failed or "
        f"diverged replicates count as chance accuracy ({CHANCE:g} on every test example); "
        f"[how the comparison is judged]({docs})."
    )
    return text


def warnings_of(a: Analysis) -> list[str]:
    out = []
    for r in a.rows.values():
        if r.mismatch:
            out.append(f"{r.name}: replicates not run with the selected setting: {r.mismatch}")
        for search, t in r.selections.items():
            if t is None:
                out.append(f"{r.name}: search {search}: no tuning trial finished, none selected")
        if any(x.ok and x.correct is None for x in r.replicates + r.defaults):
            out.append(f"{r.name}: runs without test_correct.npy: test-set noise not covered")
        if unfinished := [x.name for x in r.replicates if not x.ok and x.status not in FAILED]:
            out.append(f"{r.name}: unfinished replicates, not counted: {', '.join(unfinished)}")
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
        f"Budget: {p.searches} search(es) of {p.budget} trials per optimizer, objective "
        f"`{p.objective}` on the validation split, tuning seeds {p.tuning_seeds}; "
        f"replicates with seeds {p.replicate_seeds} (search r: + 1000·r); "
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
        "finds no detectable difference. 'Detectable': the difference this budget finds with "
        "80% power at the first Holm step.",
        "",
        "## Per optimizer",
        "",
        *tuning_table(rows, p.budget),
        "",
        *results_table(a, rows),
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
