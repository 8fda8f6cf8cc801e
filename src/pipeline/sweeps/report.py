"""The comparison report of one sweep, read from MLflow: a figure and a ranked table.

Rows are the distinct values of the swept keys (the command-line overrides that differ between
the sweep's child runs, seeds excepted: seeds are repetitions, summarised as mean ± std and a
min–max band). Only FINISHED runs enter the numbers; failed and diverged runs are listed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.sweeps.common import (
    ROLE_TAG,
    RunData,
    best_setting,
    fmt_value,
    load_runs,
    new_report_folder,
    reaches,
    swept_keys,
)
from pipeline.sweeps.figures import plot
from pipeline.tracking.status import Status


@dataclass
class Report:
    folder: Path
    table: pd.DataFrame
    markdown: str


def first_epoch_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((i + 1 for i, (_, v) in enumerate(curve) if reaches(v, target)), None)


def last(curve: list[tuple[int, float]]) -> float:
    return curve[-1][1] if curve else math.nan


def group_row(group: list[RunData], target: float) -> dict[str, Any]:
    ok = [r for r in group if r.status == Status.FINISHED]
    bad = [r.status for r in group if r.status != Status.FINISHED]
    counts = [f"{len(ok)} ok"] if ok else []
    status = ", ".join(counts + [f"{bad.count(s)} {s}" for s in sorted(set(bad))]) if bad else "ok"

    def mean(values: list[float]) -> float:
        values = [v for v in values if not math.isnan(v)]
        return statistics.fmean(values) if values else math.nan

    test = [r.test_acc for r in ok if not math.isnan(r.test_acc)]
    reached = [first_epoch_reaching(r.curves["val/acc"], target) for r in ok]
    reached = [e for e in reached if e is not None]
    return {
        "runs": len(group),
        "finished": len(ok),
        "failed": len(group) - len(ok),
        "diverged": bad.count("DIVERGED"),
        "test_acc_mean": statistics.fmean(test) if test else math.nan,
        "test_acc_std": statistics.stdev(test) if len(test) > 1 else math.nan,
        "best_val_acc": mean(
            [max((v for _, v in r.curves["val/acc"]), default=math.nan) for r in ok]
        ),
        "final_train_loss": mean(
            [last(r.curves["train/loss_epoch"] or r.curves["train/loss"]) for r in ok]
        ),
        "epoch_time_s": mean([v for r in ok for _, v in r.curves["epoch_time_s"]]),
        "epochs_to_target": statistics.fmean(reached) if reached else math.nan,
        "reached_target": f"{len(reached)}/{len(ok)}",
        "status": status,
    }


def build_table(
    runs: list[RunData], keys: list[str], target: float, by_objective: bool = False
) -> pd.DataFrame:
    """One row per setting, best first. `by_objective`: a search's table, ranked by what it
    selects on (the best validation accuracy), never by test accuracy."""
    groups: dict[tuple[str, ...], list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.key(keys), []).append(run)
    rows = [
        {**dict(zip(keys, values, strict=True)), **group_row(g, target)}
        for values, g in groups.items()
    ]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # Best first (test accuracy, then best validation accuracy; a search: the other way round);
    # groups with no result last.
    order = ["test_acc_mean", "best_val_acc"]
    table = table.sort_values(
        order[::-1] if by_objective else order, ascending=False, na_position="last", kind="stable"
    ).reset_index(drop=True)
    ranks = [i + 1 if n else None for i, n in enumerate(table["finished"])]
    table.insert(0, "rank", pd.array(ranks, dtype="Int64"))  # no rank: no finished run
    return table


def num(value: float, digits: int = 4) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def to_markdown(table: pd.DataFrame, keys: list[str], target: float) -> str:
    header = [
        "rank",
        *keys,
        "runs",
        "test acc (mean ± std)",
        "best val acc",
        "final train loss",
        "epoch time (s)",
        f"epochs to val acc ≥ {target:g}",
        "status",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        test = num(row["test_acc_mean"])
        if not math.isnan(row["test_acc_std"]):
            test += f" ± {row['test_acc_std']:.4f}"
        reached, finished = row["reached_target"], row["finished"]
        epochs = num(row["epochs_to_target"], 1)
        if epochs == "—" and finished:
            epochs = "not reached"
        elif finished and reached != f"{finished}/{finished}":
            epochs += f" ({reached} runs)"
        cells = [
            "—" if pd.isna(row["rank"]) else str(row["rank"]),
            *(fmt_value(str(row[k])) for k in keys),
            str(row["runs"]),
            test,
            num(row["best_val_acc"]),
            num(row["final_train_loss"]),
            num(row["epoch_time_s"], 2),
            epochs,
            row["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def context_line(client: MlflowClient, runs: list[RunData]) -> str:
    """Data and epochs of the sweep, from its first finished child."""
    ok = next((r for r in runs if r.status == Status.FINISHED), None)
    if ok is None:
        return ""
    run = client.get_run(ok.run_id)
    tags, params = run.data.tags, run.data.params
    return (
        f"Data: {params.get('data.name', '?')} ({tags.get('data.source_used', '?')}, "
        f"{tags.get('data.train_size', '?')} train / {tags.get('data.val_size', '?')} val / "
        f"{tags.get('data.test_size', '?')} test), "
        f"epochs: {params.get('trainer.max_epochs', '?')}, "
        f"batch size {params.get('data.batch_size', '?')}."
    )


def search_line(parent: Any) -> str:
    """What an Optuna search selected (the parent's best.* params), before its table."""
    params = parent.data.params
    best = {k.removeprefix("best."): v for k, v in params.items() if k.startswith("best.")}
    selected = (
        f"Selected: {best_setting(best, parent.data.metrics.get('best_value'))}. "
        if best
        else "No trial finished: nothing selected. "
    )
    return (
        selected + "Ranked by the search's objective, the best validation accuracy; test "
        "accuracy is shown, not selected on."
    )


def write_report(
    client: MlflowClient, parent_id: str, folder: Path, target_val_acc: float = 0.9
) -> Report:
    """Write report.png, report.md and report.csv into a new folder under `folder` and the
    same-named artifact folder of the parent run: report/, then report-2/, ... (never over an
    earlier report)."""
    parent = client.get_run(parent_id)
    if parent.data.tags.get(ROLE_TAG) != "parent":
        raise ValueError(f"MLflow run {parent_id} is not the parent run of a sweep")
    runs = load_runs(client, parent_id)
    keys = swept_keys(runs)
    search = parent.data.tags.get("sweep.sweeper") == "OptunaSweeper"
    table = build_table(runs, keys, target_val_acc, by_objective=search)
    name, folder = new_report_folder(client, parent_id, Path(folder))
    title = parent.info.run_name or parent_id
    order = [tuple(str(row[k]) for k in keys) for row in table.to_dict("records")]
    plot(runs, keys, order, folder / "report.png", title)
    table.to_csv(folder / "report.csv", index=False)
    markdown = to_markdown(table, keys, target_val_acc) if not table.empty else "(no runs)"
    failed = [r for r in runs if r.status != Status.FINISHED]
    text = [f"# {title}", "", f"MLflow parent run `{parent_id}`. {context_line(client, runs)}", ""]
    selected = search_line(parent) if search else ""
    text += [selected, ""] if selected else []
    text += [markdown, "", "![report](report.png)"]
    if failed:
        text += ["", "## Failed or diverged runs", ""]
        text += [f"- {r.status}: {r.name} (`{r.run_id}`) {r.error}".rstrip() for r in failed]
    (folder / "report.md").write_text("\n".join(text) + "\n")
    client.log_artifacts(parent_id, str(folder), name)
    print(f"\n{title}\n{selected}\n{markdown}" if selected else f"\n{title}\n{markdown}")
    for r in failed:
        print(f"  {r.status}: {r.name} ({r.run_id}) {r.error}".rstrip())
    print(f"Report: {folder}  (also in MLflow run {parent_id}, artifacts {name}/)", flush=True)
    return Report(folder, table, markdown)


def find_parent(client: MlflowClient, experiment: str, sweep: str | None) -> str:
    """The parent run id for `sweep`, or the latest sweep's. `sweep` is a run id, a parent run's
    name, or the start of one (the UI cuts long names): the newest match wins, as for no name."""
    if sweep:
        try:
            return client.get_run(sweep).info.run_id
        except Exception:  # not a run id: look it up by name
            pass
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} in this store; run a sweep first")
    query = f"tags.`{ROLE_TAG}` = 'parent'"
    parents = client.search_runs(
        [exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=5000
    )
    if sweep:
        exact = [r for r in parents if r.info.run_name == sweep]
        parents = exact or [r for r in parents if (r.info.run_name or "").startswith(sweep)]
    if not parents:
        what = f"no sweep named, named like, or with run id {sweep!r}" if sweep else "no sweep yet"
        raise LookupError(
            f"{what} in experiment {experiment!r}; run `python train.py -m ...` first"
        )
    return parents[0].info.run_id
