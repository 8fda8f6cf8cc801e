"""The comparison report of one sweep, read from MLflow: a figure and a ranked table.

Rows are the distinct values of the swept keys (the command-line overrides that differ between
the sweep's child runs, seeds excepted: seeds are repetitions, summarised as mean ± std and a
min–max band). Only FINISHED runs enter the numbers; failed and diverged runs are listed.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.ticker import FuncFormatter
from mlflow.tracking import MlflowClient

from pipeline.sweep import PLUMBING, ROLE_TAG, children, is_diverged

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = ("train/loss", "val/acc", "epoch_time_s", "train/loss_epoch")
NO_SWEPT_KEY = "optimizer"  # a sweep over seeds only: one row per optimizer


@dataclass
class RunData:
    run_id: str
    name: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING, or DIVERGED (status FAILED + tag)
    overrides: dict[str, str]
    test_acc: float
    curves: dict[str, list[tuple[int, float]]]
    optimizer: str
    error: str = ""

    def key(self, keys: list[str]) -> tuple[str, ...]:
        """The run's values of the swept keys (its optimizer when only seeds were swept)."""
        if keys == [NO_SWEPT_KEY] and NO_SWEPT_KEY not in self.overrides:
            return (self.optimizer,)
        return tuple(self.overrides.get(k, "") for k in keys)


@dataclass
class Report:
    folder: Path
    table: pd.DataFrame
    markdown: str


def parse_overrides(text: str) -> dict[str, str]:
    """'optimizer=adam seed=1 +x=2' -> {'optimizer': 'adam', 'seed': '1', 'x': '2'}."""
    pairs = (item.lstrip("+~").partition("=") for item in text.split())
    return {k: v for k, _, v in pairs if not k.startswith(PLUMBING)}


def load_runs(client: MlflowClient, parent_id: str) -> list[RunData]:
    runs = []
    for run in children(client, parent_id):
        run_id, status = run.info.run_id, run.info.status
        status = "DIVERGED" if is_diverged(run) else status
        curves = {}
        for key in CURVES:
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            curves[key] = [(m.step, m.value) for m in points]
        runs.append(
            RunData(
                run_id=run_id,
                name=run.info.run_name or run_id,
                status=status,
                overrides=parse_overrides(run.data.tags.get("overrides", "")),
                test_acc=run.data.metrics.get("test/acc", math.nan),
                curves=curves,
                optimizer=run.data.tags.get("optimizer", "?"),
                error="" if status == "FINISHED" else run.data.tags.get("error", ""),
            )
        )
    return runs


def swept_keys(runs: list[RunData]) -> list[str]:
    """Override keys whose value differs between runs (seed excepted), in command-line order."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    swept = [k for k in keys if k != "seed" and len({r.overrides.get(k, "") for r in runs}) > 1]
    return swept or [NO_SWEPT_KEY]


def fmt_value(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() else f"{number:.4g}"


def first_epoch_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((i + 1 for i, (_, v) in enumerate(curve) if v >= target), None)


def last(curve: list[tuple[int, float]]) -> float:
    return curve[-1][1] if curve else math.nan


def group_row(group: list[RunData], target: float) -> dict[str, Any]:
    ok = [r for r in group if r.status == "FINISHED"]
    bad = [r.status for r in group if r.status != "FINISHED"]
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


def build_table(runs: list[RunData], keys: list[str], target: float) -> pd.DataFrame:
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
    # Best first: test accuracy, then best validation accuracy; groups with no result last.
    table = table.sort_values(
        ["test_acc_mean", "best_val_acc"], ascending=False, na_position="last", kind="stable"
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


def label(values: tuple[str, ...], keys: list[str]) -> str:
    if len(keys) == 1:
        return fmt_value(values[0])
    return " ".join(f"{k}={fmt_value(v)}" for k, v in zip(keys, values, strict=True))


def band(curves: list[list[tuple[int, float]]], by_index: bool) -> pd.DataFrame:
    """mean/min/max per step (or per position, for per-epoch metrics) over the runs."""
    frames = [
        pd.Series([v for _, v in c], index=range(1, len(c) + 1) if by_index else [s for s, _ in c])
        for c in curves
        if c
    ]
    if not frames:
        return pd.DataFrame(columns=["mean", "min", "max"])
    stacked = pd.concat(frames, axis=1)
    stacked = stacked[~stacked.index.duplicated(keep="last")]
    return pd.DataFrame(
        {"mean": stacked.mean(axis=1), "min": stacked.min(axis=1), "max": stacked.max(axis=1)}
    )


def plot(
    runs: list[RunData], keys: list[str], order: list[tuple[str, ...]], path: Path, title: str
) -> Path:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab10")
    for i, values in enumerate(order):
        ok = [r for r in runs if r.status == "FINISHED" and r.key(keys) == values]
        color = colors(i % 10)
        for ax, key, by_index in ((loss_ax, "train/loss", False), (acc_ax, "val/acc", True)):
            stats = band([r.curves[key] for r in ok], by_index)
            if stats.empty:
                continue
            ax.plot(
                stats.index,
                stats["mean"],
                color=color,
                label=label(values, keys),
                marker="o" if by_index else None,
            )
            if len(ok) > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2)
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    loss_ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    legend_ax = loss_ax if loss_ax.lines else acc_ax  # train/loss needs log_every_n_steps steps
    if legend_ax.lines:
        legend_ax.legend(title=" ".join(keys) if len(keys) == 1 else None, fontsize="small")
    if len(runs) > len(order):
        title += "\n(line: mean over seeds, band: min–max)"
    fig.suptitle(textwrap.fill(title, 110), fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def context_line(client: MlflowClient, runs: list[RunData]) -> str:
    """Data and epochs of the sweep, from its first finished child."""
    ok = next((r for r in runs if r.status == "FINISHED"), None)
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


def write_report(
    client: MlflowClient, parent_id: str, folder: Path, target_val_acc: float = 0.9
) -> Report:
    """Write report.png, report.md and report.csv into `folder` and the parent's artifacts."""
    parent = client.get_run(parent_id)
    if parent.data.tags.get(ROLE_TAG) != "parent":
        raise ValueError(f"MLflow run {parent_id} is not the parent run of a sweep")
    runs = load_runs(client, parent_id)
    keys = swept_keys(runs)
    table = build_table(runs, keys, target_val_acc)
    folder.mkdir(parents=True, exist_ok=True)
    title = parent.info.run_name or parent_id
    order = [tuple(str(row[k]) for k in keys) for row in table.to_dict("records")]
    plot(runs, keys, order, folder / "report.png", title)
    table.to_csv(folder / "report.csv", index=False)
    markdown = to_markdown(table, keys, target_val_acc) if not table.empty else "(no runs)"
    failed = [r for r in runs if r.status != "FINISHED"]
    text = [f"# {title}", "", f"MLflow parent run `{parent_id}`. {context_line(client, runs)}", ""]
    text += [markdown, "", "![report](report.png)"]
    if failed:
        text += ["", "## Failed or diverged runs", ""]
        text += [f"- {r.status}: {r.name} (`{r.run_id}`) {r.error}".rstrip() for r in failed]
    (folder / "report.md").write_text("\n".join(text) + "\n")
    for name in ("report.png", "report.md", "report.csv"):
        client.log_artifact(parent_id, str(folder / name), "report")
    print(f"\n{title}\n{markdown}")
    for r in failed:
        print(f"  {r.status}: {r.name} ({r.run_id}) {r.error}".rstrip())
    print(f"Report: {folder}  (also in MLflow run {parent_id}, artifacts report/)", flush=True)
    return Report(folder, table, markdown)


def find_parent(client: MlflowClient, experiment: str, sweep: str | None) -> str:
    """The parent run id for `sweep` (a run id or a parent run's name), or the latest sweep's."""
    if sweep:
        try:
            return client.get_run(sweep).info.run_id
        except Exception:  # not a run id: look it up by name
            pass
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} in this store; run a sweep first")
    query = f"tags.`{ROLE_TAG}` = 'parent'"
    if sweep:
        query += " and attributes.run_name = '" + sweep.replace("'", "\\'") + "'"
    found = client.search_runs(
        [exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not found:
        what = f"no sweep named or with run id {sweep!r}" if sweep else "no sweep yet"
        raise LookupError(
            f"{what} in experiment {experiment!r}; run `python train.py -m ...` first"
        )
    return found[0].info.run_id
