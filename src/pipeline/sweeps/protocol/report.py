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
from pipeline.sweeps.protocol.runs import load_protocol
from pipeline.sweeps.protocol.stats import Estimate
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
    def e(prefix: str, x: Estimate | None) -> dict[str, float]:
        x = x or Estimate(math.nan)
        return {prefix: x.value, f"{prefix}_low": x.low, f"{prefix}_high": x.high}

    per = []
    for n, r in a.rows.items():
        rank = a.ranks.get(n)
        per.append(
            {
                "optimizer": n,
                "rank": rank.rank if rank else None,
                "best_place": rank.best if rank else None,
                "worst_place": rank.worst if rank else None,
                "trials": len(r.trials),
                "budget": a.protocol.budget,
                "failed_trials": failed_trials(r)[0],
                "diverged_trials": failed_trials(r)[1],
                **{
                    f"selected.{k}": r.selected.hyperparameters.get(k) if r.selected else None
                    for k in r.tuned_keys
                },
                "selected_val_acc": r.selected.val_acc() if r.selected else math.nan,
                **e("tuned_test_acc", r.tuned),
                **e("tuned_test_acc_test_set", r.tuned_test_set),
                **e("default_test_acc", r.default),
                **e("gain", r.gain and r.gain.seeds),
                "gain_p": r.gain.p if r.gain else math.nan,
                "gain_verdict": r.gain.verdict if r.gain else None,
                "steps_to_target": median(r.to_target, 0),
                "seconds_to_target": median(r.to_target, 1),
                "replicates_ok": sum(x.ok for x in r.replicates),
                "replicates": len(r.replicates),
            }
        )
    pairs = [
        {
            "a": c.a,
            "b": c.b,
            "seeds": c.n_seeds,
            **e("difference", c.seeds),
            "test_set_low": c.samples.low if c.samples else math.nan,
            "test_set_high": c.samples.high if c.samples else math.nan,
            "p_seeds_raw": c.seeds.p,
            "p_seeds_holm": c.p_seeds,
            "p_test_set_raw": c.samples.p if c.samples else math.nan,
            "p_test_set_holm": c.p_samples,
            "p": c.p,
            "verdict": c.verdict,
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
