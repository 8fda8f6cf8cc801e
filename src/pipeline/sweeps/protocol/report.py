"""The report of a fair comparison, from its runs as stored in MLflow (docs/sweeps-and-reports.md).

`write_protocol_report` writes report.md, report.csv (per optimizer), pairwise.csv and three
figures into a new folder `report/` (then `report-2/`, ...), locally and among the parent run's
artifacts: a report is a record, and a second one never replaces the first.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.sweeps.common import new_report_folder
from pipeline.sweeps.protocol import figures
from pipeline.sweeps.protocol.analysis import Analysis, analyse
from pipeline.sweeps.protocol.inference import Test
from pipeline.sweeps.protocol.runs import load_protocol
from pipeline.sweeps.protocol.tables import (
    docs_link,
    failed_trials,
    how_sure,
    markdown,
    ranking_table,
)


def median(points: list[tuple[float, float]], which: int) -> float:
    return float(np.median([p[which] for p in points])) if points else math.nan


def csv_tables(a: Analysis) -> tuple[pd.DataFrame, pd.DataFrame]:
    def e(prefix: str, x: Test | None) -> dict[str, float]:
        x = x or Test(math.nan)
        return {prefix: x.value, f"{prefix}_low": x.low, f"{prefix}_high": x.high}

    per = []
    for n, r in a.rows.items():
        rank = a.ranks.get(n)
        per.append(
            {
                "optimizer": n,
                "best_place": rank.best if rank else None,
                "worst_place": rank.worst if rank else None,
                "searches": len(r.selections),
                "trials": len(r.trials),
                "budget": a.protocol.budget * len(r.selections),
                "failed_trials": failed_trials(r)[0],
                "diverged_trials": failed_trials(r)[1],
                **{
                    f"selected.{k}": r.selected.hyperparameters.get(k) if r.selected else None
                    for k in r.tuned_keys
                },
                "selected_val_acc": r.selected.val_acc() if r.selected else math.nan,
                **e("tuned_test_acc", r.tuned),
                "tuned_test_acc_df": r.tuned.df,
                **e("default_test_acc", r.default),
                **e("gain", r.gain and r.gain.test),
                "gain_p_holm_exploratory": r.gain.p if r.gain else math.nan,
                "gain_verdict": r.gain.verdict if r.gain else None,
                "steps_to_target": median(r.to_target, 0),
                "seconds_to_target": median(r.to_target, 1),
                "reached_target": sum(not math.isinf(s) for s, _ in r.to_target),
                "replicates_ok": sum(x.ok for x in r.replicates),
                "replicates": len(r.replicates),
            }
        )
    pairs = [
        {
            "a": c.a,
            "b": c.b,
            "runs_each": c.units,
            **e("difference", c.test),
            "se": c.test.se,
            "df": c.test.df,
            "p_raw": c.test.p,
            "p_holm": c.p,
            **e("p_a_beats_b", c.improve),
            "detectable_80": c.detectable,
            "verdict": c.verdict,
            "note": c.test.note,
        }
        for c in a.pairs
    ]
    return pd.DataFrame(per), pd.DataFrame(pairs)


def write_protocol_report(
    client: MlflowClient, parent_run_id: str, folder: Path, target: float | None = None
) -> Path:
    """Write the report into a new folder under `folder` and the same-named artifact folder of
    the parent run (report/, then report-2/, ...); returns the local folder. `target`: another
    validation target than the protocol's own (protocol.target_val_acc)."""
    protocol = load_protocol(client, parent_run_id)
    if target is not None:
        protocol.target = target
    a = analyse(protocol)
    name, out = new_report_folder(client, parent_run_id, Path(folder))
    rows, title = [a.rows[n] for n in a.protocol.optimizers], a.protocol.protocol_id
    figures.sensitivity(rows, out / "sensitivity.png", title)
    figures.expected_best(rows, out / "expected_best.png", title)
    figures.replicate_curves(rows, out / "curves.png", title, a.protocol.target)
    per, pairs = csv_tables(a)
    per.to_csv(out / "report.csv", index=False)
    pairs.to_csv(out / "pairwise.csv", index=False)
    (out / "report.md").write_text(markdown(a, docs_link(out)))
    client.log_artifacts(parent_run_id, str(out), name)
    print("\n".join([*ranking_table(a), "", *how_sure(a)[:1]]))
    print(f"Report: {out}  (also in MLflow run {parent_run_id}, artifacts {name}/)", flush=True)
    return out
