"""Sweeps: one parent MLflow run per multirun, children per job, parallel jobs, the report."""

from __future__ import annotations

import csv
import math
import os
import runpy
import statistics
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, run_cli, run_in_process, runs_in, store_overrides
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.sweeps.common import (
    best_setting,
    children,
    count_jobs,
    fmt_value,
    sweep_summary,
)
from pipeline.sweeps.report import find_parent, write_report
from pipeline.sweeps.workers import threads_per_job

TINY = [
    "data.source=embedded",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.log_every_n_steps=1",
    "tracking.log_model=false",
]


def sweep(tmp_path: Path, *overrides: str, ok: bool = True, capsys=None):
    """`train.py -m ...` into a private store -> (client, parent run, children, output); run in
    this process when given `capsys` (the output read from it), else as a process of its own."""
    store = tmp_path / "mlruns"
    args = ["-m", *overrides, *TINY, *store_overrides(store), f"hydra.sweep.dir={tmp_path}/sweep"]
    if capsys is None:
        proc = run_cli(*args)
        status, output = proc.returncode, proc.stdout + proc.stderr
    else:
        status = run_in_process(*args)
        captured = capsys.readouterr()
        output = captured.out + captured.err
    assert (status == 0) == ok, output[-3000:]
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    assert "mlflow.parentRunId" not in parent.data.tags
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    return client, parent, children, output


def report_rows(tmp_path: Path) -> list[dict[str, str]]:
    folder = tmp_path / "sweep" / "report"
    png = (folder / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (folder / "report.md").read_text().startswith("# sweep ")
    with open(folder / "report.csv") as f:
        return list(csv.DictReader(f))


def history(client: MlflowClient, run, key: str) -> list[float]:
    return [m.value for m in client.get_metric_history(run.info.run_id, key)]


@pytest.mark.slow
def test_sweep_has_one_parent_with_a_child_per_job_and_a_report(tmp_path, capsys):
    client, parent, children, output = sweep(tmp_path, "optimizer=sgd,adam", capsys=capsys)

    assert sorted(r.data.tags["optimizer"] for r in children) == ["adam", "sgd"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.id"] == "sweep"
    assert parent.data.metrics["sweep/jobs"] == 2 and parent.data.metrics["sweep/failed"] == 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {"report/report.png", "report/report.md", "report/report.csv"}

    # One row per optimizer; its numbers are the children's, read back from MLflow.
    rows = {row["optimizer"]: row for row in report_rows(tmp_path)}
    assert set(rows) == {"sgd", "adam"}
    for child in children:
        row = rows[child.data.tags["optimizer"]]
        assert float(row["test_acc_mean"]) == pytest.approx(child.data.metrics["test/acc"])
        assert 0.05 < float(row["test_acc_mean"]) <= 1
        assert float(row["best_val_acc"]) == pytest.approx(max(history(client, child, "val/acc")))
        assert 0 < float(row["final_train_loss"]) < 10 and float(row["epoch_time_s"]) > 0
        assert row["status"] == "ok" and row["runs"] == "1"
    assert [row["rank"] for row in report_rows(tmp_path)] == ["1", "2"]
    assert "| adam |" in output and "| sgd |" in output  # the table on the terminal

    # scripts/compare.py reads the same sweep back from MLflow: the latest one, or by name / id.
    out = tmp_path / "again"
    compare = runpy.run_path(str(ROOT / "scripts" / "compare.py"))["main"]  # in-process: faster
    assert compare(["--out", str(out), *store_overrides(tmp_path / "mlruns")]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report-2") in printed and "| adam |" in printed  # report/ is the sweep's
    again = (out / "report-2" / "report.csv").read_text()
    assert again == (tmp_path / "sweep/report/report.csv").read_text()
    shown = " ".join(parent.info.run_name.split()[:2])  # the start the UI shows of a long name
    for selector in (parent.info.run_name, parent.info.run_id, shown):
        assert find_parent(client, "mnist-optimizers", selector) == parent.info.run_id
    with pytest.raises(LookupError, match="no sweep named"):
        find_parent(client, "mnist-optimizers", "nope")


@pytest.mark.slow
def test_parallel_joblib_sweep_keeps_every_metric_point(tmp_path, capsys):
    # The sweep in this process; joblib runs its two jobs in two worker processes.
    client, parent, children, _ = sweep(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2", capsys=capsys
    )

    assert parent.data.tags["sweep.launcher"] == "JoblibLauncher"
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    cores = len(os.sched_getaffinity(0))
    for child in children:
        assert child.data.tags["torch.threads"] == str(threads_per_job(2, cores))
        # 2 epochs x 5 batches, logged every step; per-epoch metrics once per epoch.
        assert len(history(client, child, "train/loss")) == 10
        for key in ("val/acc", "val/loss", "train/acc", "epoch_time_s"):
            assert len(history(client, child, key)) == 2, key
        assert len(history(client, child, "test/acc")) == 1
    # Seeds only: one row, mean and min-max over both runs.
    (row,) = report_rows(tmp_path)
    accs = [r.data.metrics["test/acc"] for r in children]
    assert float(row["test_acc_mean"]) == pytest.approx(sum(accs) / 2)
    assert row["runs"] == "2"


@pytest.mark.slow
def test_failing_jobs_do_not_stop_the_sweep_and_fail_its_parent(tmp_path, capsys):
    # limit_val_batches=0: no best checkpoint, training fails at its end (run exists);
    # fashion_mnist has no embedded copy: that job fails before its run exists.
    client, parent, children, output = sweep(
        tmp_path,
        "data=mnist,fashion_mnist",
        "trainer.limit_val_batches=null,0",
        ok=False,
        capsys=capsys,
    )

    assert len(children) == 4
    statuses = sorted(r.info.status for r in children)
    assert statuses == ["FAILED", "FAILED", "FAILED", "FINISHED"], statuses
    finished = next(r for r in children if r.info.status == "FINISHED")
    assert finished.data.params["data.name"] == "mnist" and "test/acc" in finished.data.metrics
    assert {r.data.tags["sweep.job"] for r in children} == {"0", "1", "2", "3"}
    errors = sorted(r.data.tags.get("error", "") for r in children if r.info.status == "FAILED")
    assert errors[0].startswith("DataError: data.source=embedded has only MNIST")
    assert errors[2].startswith('ValueError: `.test(ckpt_path="best")`')

    assert parent.info.status == "FAILED"
    assert parent.data.metrics["sweep/jobs"] == 4
    assert parent.data.metrics["sweep/failed"] == 3
    assert parent.data.metrics["sweep/finished"] == 1
    assert "Sweep FAILED" in output

    rows = report_rows(tmp_path)
    assert [row["status"] for row in rows] == ["ok", "1 FAILED", "1 FAILED", "1 FAILED"]
    assert rows[0]["data"] == "mnist" and rows[0]["rank"] == "1"
    assert math.isnan(float(rows[1]["test_acc_mean"] or "nan"))
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert report.count("- FAILED: ") == 3 and "DataError" in report


@pytest.mark.slow
def test_a_parallel_search_prints_a_line_per_batch_and_per_job(tmp_path):
    """Two trials at once in joblib workers: one line for the batch, one per job with its run
    id and result; no launcher banner, no epoch lines to interleave, the UI's address once."""
    args = ("hparams_search=optuna_lr", "optimizer=rmsprop", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "trainer.max_epochs=1")  # fmt: skip
    client, parent, children, output = sweep(tmp_path, *args)  # its own process: workers' too
    lines = output.splitlines()
    study = parent.data.tags["optuna.study"]
    assert [line.partition("[HYDRA] ")[2] for line in lines if "[HYDRA] " in line][1:] == [
        f"Jobs #0-#1: trials 0, 1 of {study}"
    ]
    assert "Joblib.Parallel" not in output and "Launching" not in output
    assert not [line for line in lines if line.startswith("epoch ")]
    assert output.count("See it: ") == 1 and " nan" not in output
    ids = {r.data.tags["optuna.trial"]: r.info.run_id for r in children}
    for number in range(2):
        (line,) = [line for line in lines if line.startswith(f"job {number} (optimizer.lr=")]
        run = client.get_run(ids[str(number)])  # job n is trial n here
        assert run.info.run_id in line
        if run.info.status == "FINISHED":
            val, test = max(history(client, run, "val/acc")), run.data.metrics["test/acc"]
            assert line.endswith(f"best val/acc {val:.4f}, test/acc {test:.4f}")
        else:
            assert "diverged: " in line


@pytest.mark.slow
def test_optuna_lr_search_records_trials_and_best_lr_on_its_parent(tmp_path, capsys):
    args = ("hparams_search=optuna_lr", "optimizer=rmsprop", "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=1")  # fmt: skip
    client, parent, children, output = sweep(tmp_path, *args, capsys=capsys)

    assert parent.data.tags["sweep.sweeper"] == "OptunaSweeper"
    # A trial may diverge (RMSprop with lr near 1.0): FAILED, tagged, a FAIL trial; never best.
    diverged = [r for r in children if r.data.tags.get("diverged") == "true"]
    assert all(r.info.status == "FAILED" for r in diverged)
    finished = [r for r in children if r not in diverged]
    assert len(children) == 2 and {r.info.status for r in finished} == {"FINISHED"}
    assert sorted(r.data.tags["optuna.trial"] for r in children) == ["0", "1"]
    lrs = {float(r.data.params["optimizer.lr"]): r for r in children}
    assert len(lrs) == 2 and all(1e-5 <= lr <= 1.0 for lr in lrs)
    # The best trial is the finished child with the highest validation accuracy.
    best_lr, best = max(
        ((lr, r) for lr, r in lrs.items() if r in finished),
        key=lambda item: max(history(client, item[1], "val/acc")),
    )
    assert float(parent.data.params["best.optimizer.lr"]) == pytest.approx(best_lr)
    assert parent.data.metrics["best_value"] == pytest.approx(max(history(client, best, "val/acc")))
    rows = report_rows(tmp_path)
    assert len(rows) == 2 and float(rows[0]["optimizer.lr"]) == pytest.approx(best_lr)
    summary = next(line for line in output.splitlines() if line.startswith("Search finished"))
    assert f"best optimizer.lr={fmt_value(parent.data.params['best.optimizer.lr'])} (" in summary

    # The study is kept (mlruns/optuna.db): the same command finds it done and runs nothing.
    _, again, children_again, output = sweep(tmp_path, *args, capsys=capsys)
    assert again.info.run_id == parent.info.run_id and again.data.tags["sweep.resumes"] == "1"
    assert len(children_again) == 2 and "Launching" not in output
    assert (tmp_path / "mlruns" / "optuna.db").is_file()


@pytest.mark.slow
def test_a_search_with_diverged_trials_says_it_finished_and_exits_0(tmp_path, capsys):
    """Diverged trials are an expected outcome of a search over a wide range: counted as failed
    trials, they do not fail the search, and no line says FAILED or error for them."""
    args = ("hparams_search=optuna_lr", "optimizer=sgd", "hydra.sweeper.n_trials=2",
            'hydra.sweeper.params={optimizer.lr:"tag(log, interval(10.0, 1000.0))"}')  # fmt: skip
    client, parent, children, output = sweep(tmp_path, *args, capsys=capsys)  # asserts exit 0
    assert parent.info.status == "FINISHED"
    assert [r.data.tags.get("diverged") for r in children] == ["true", "true"]
    last = "Search finished: 2 trials, 0 ok, 2 diverged (counted as failed trials); "
    assert f"{last}parent MLflow run {parent.info.run_id}" in output.splitlines(), output[-3000:]
    assert "FAILED" not in output.replace("marked FAILED", "") and "error:" not in output


def test_the_sweep_summary_names_what_happened():
    grid, optuna = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "x.OptunaSweeper"
    counts = {"jobs": 5, "finished": 2, "failed": 3, "diverged": 2}
    assert sweep_summary("FAILED", counts, grid, "p") == (
        "Sweep FAILED: parent MLflow run p (5 jobs, 2 finished, 3 failed, 2 diverged)"
    )
    assert sweep_summary("FINISHED", counts, optuna, "p") == (
        "Search finished: 5 trials, 2 ok, 2 diverged, 1 failed (counted as failed trials); "
        "parent MLflow run p"
    )
    clean = {"jobs": 2, "finished": 2, "failed": 0, "diverged": 0}
    assert sweep_summary("FINISHED", clean, optuna, "p") == (
        "Search finished: 2 trials, 2 ok; parent MLflow run p"
    )
    assert sweep_summary("KILLED", clean, optuna, "p").startswith("Sweep KILLED: ")
    assert sweep_summary("FINISHED", clean, grid, "p", done_before=2) == (
        "Sweep FINISHED: parent MLflow run p (2 jobs, 2 finished, 0 failed, 0 diverged; "
        "2 of them done before, not run again)"
    )
    assert sweep_summary("FINISHED", clean, optuna, "p", done_before=1) == (
        "Search finished: 2 trials, 2 ok (1 done before, not run again); parent MLflow run p"
    )
    best = best_setting({"optimizer.lr": 0.000751234}, 0.78)
    assert sweep_summary("FINISHED", clean, optuna, "p", best) == (
        "Search finished: 2 trials, 2 ok; best optimizer.lr=0.0007512 (val/acc 0.7800); "
        "parent MLflow run p"
    )


@pytest.mark.slow
def test_running_a_sweep_again_skips_its_finished_jobs(tmp_path, capsys):
    client, parent, children, _ = sweep(tmp_path, "seed=1,2", capsys=capsys)
    # seed=2 as a SIGKILL after its last epoch leaves it: RUNNING, its writer gone; its journal
    # and last checkpoint are there, so the job goes on in the same run (test and record).
    victim = next(r for r in children if r.data.params["seed"] == "2")
    client.update_run(victim.info.run_id, "RUNNING")
    client.set_tag(victim.info.run_id, "owner.pid", "4194304")  # above Linux's largest pid

    _, again, children_again, output = sweep(tmp_path, "seed=1,2", capsys=capsys)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert "Already done: MLflow run" in output  # seed=1
    assert f"Continuing the job's interrupted MLflow run {victim.info.run_id}" in output
    assert len(children_again) == 2 and {r.info.status for r in children_again} == {"FINISHED"}
    assert {r.info.run_id for r in children_again} == {r.info.run_id for r in children}
    assert again.data.metrics["sweep/jobs"] == 2
    summary = next(line for line in output.splitlines() if line.startswith("Sweep FINISHED"))
    assert summary.endswith("; 1 of them done before, not run again)")  # seed=1, not seed=2


@pytest.mark.slow
def test_bad_value_in_any_job_stops_the_sweep_before_any_run(tmp_path, capsys):
    store = tmp_path / "mlruns"
    status = run_in_process("-m", "optimizer.lr=0.01,-1", *TINY, *store_overrides(store))
    stderr = capsys.readouterr().err
    assert status == 2, stderr[-2000:]
    assert "optimizer.lr=-1 is not allowed" in stderr
    assert runs_in(store) == []


def test_threads_per_job_never_oversubscribes():
    for cores in (1, 2, 16):
        for n_jobs in (None, -1, -2, 1, 2, 3, 16):
            for batch in (None, 1, 2, 4):
                threads = threads_per_job(n_jobs, cores, batch)
                jobs = {None: 1, -1: cores, -2: max(1, cores - 1)}.get(n_jobs, n_jobs)
                at_once = min(jobs, batch or jobs, cores)
                assert threads >= 1
                assert threads * at_once <= cores
                assert threads == max(1, cores // at_once)  # and leaves no core idle
    assert threads_per_job(-1, 16, batch=2) == 8  # a protocol's 2 jobs on 16 cores


def test_presets_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", ["experiment=optimizer_comparison"], return_hydra_config=True)
        assert cfg.hydra.sweeper.params == {
            "optimizer": "sgd,momentum,adagrad,rmsprop,adam,adadelta",
            "seed": "1,2,3",
        }
        cfg = compose("train", ["experiment=fair_comparison"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper.optimizers == ["sgd", "momentum", "adagrad", "rmsprop", "adam", "adadelta"]
        assert sweeper.trials == 12 and list(sweeper.replicate_seeds) == [1, 2]
        assert sweeper.searches == 5
        assert not set(sweeper.tuning_seeds) & set(sweeper.replicate_seeds)
        assert all(o in sweeper.search_space for o in sweeper.optimizers)
        # a batch is every job that is ready; alike jobs of it train as one population
        assert "PopulationLauncher" in cfg.hydra.launcher._target_ and sweeper.n_jobs >= 1024
        cfg = compose("train", ["experiment=batch_size_1_vs_64"], return_hydra_config=True)
        assert cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.01
        assert cfg.hydra.sweeper.params == {"data.batch_size": "1,64"}


def fake_sweep(tmp_path: Path) -> tuple[MlflowClient, str]:
    """A sweep's parent and three children written straight into MLflow: lr 0.01 with seeds 1
    and 2 (test/acc 0.90, 0.80), lr 10 diverged."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("e", (tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, run_name="sweep", tags={"sweep.role": "parent"})
    parent_id = parent.info.run_id

    def child(lr: str, seed: int, status: str, val_acc: list[float], test_acc=None):
        tags = {"mlflow.parentRunId": parent_id, "overrides": f"optimizer.lr={lr} seed={seed}"}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        metrics = [Metric("val/acc", v, 0, 10 * i) for i, v in enumerate(val_acc)]
        metrics += [Metric("train/loss_epoch", 1.0 / (i + 1), 0, 10 * i) for i in range(2)]
        metrics += [Metric("epoch_time_s", 0.5 * seed, 0, 10 * i) for i in range(2)]
        metrics += [Metric("test/acc", test_acc, 0, 20)] if test_acc is not None else []
        client.log_batch(run_id, metrics=metrics)
        if status == "DIVERGED":  # how the reliability checks mark a run that blew up
            client.set_tag(run_id, "diverged", "true")
            client.set_tag(run_id, "error", "loss is nan at step 3")
        client.set_terminated(run_id, "FAILED" if status == "DIVERGED" else status)

    child("0.01", 1, "FINISHED", [0.5, 0.92], test_acc=0.90)
    child("0.01", 2, "FINISHED", [0.6, 0.88], test_acc=0.80)
    child("10", 1, "DIVERGED", [0.1])
    return client, parent_id


def test_report_numbers_and_diverged_runs(tmp_path):
    """The table from runs written straight into MLflow: seeds pooled, a diverged run listed."""
    client, parent_id = fake_sweep(tmp_path)
    report = write_report(client, parent_id, tmp_path / "reports", target_val_acc=0.9)
    assert report.folder == tmp_path / "reports" / "report"
    good, bad = report.table.to_dict("records")
    assert good["optimizer.lr"] == "0.01" and good["rank"] == 1 and good["runs"] == 2
    assert good["test_acc_mean"] == pytest.approx(0.85)
    assert good["test_acc_std"] == pytest.approx(statistics.stdev([0.9, 0.8]))
    assert good["best_val_acc"] == pytest.approx((0.92 + 0.88) / 2)
    assert good["final_train_loss"] == pytest.approx(0.5)
    assert good["epoch_time_s"] == pytest.approx(0.75)
    assert good["epochs_to_target"] == 2 and good["reached_target"] == "1/2"
    assert bad["optimizer.lr"] == "10" and pd.isna(bad["rank"]) and bad["status"] == "1 DIVERGED"
    assert "| 0.8500 ± 0.0707 |" in report.markdown and "2.0 (1/2 runs)" in report.markdown
    text = (tmp_path / "reports" / "report" / "report.md").read_text()
    assert "- DIVERGED: " in text and "loss is nan at step 3" in text
    counts = count_jobs(children(client, parent_id))
    assert counts == {"jobs": 3, "finished": 2, "failed": 1, "diverged": 1, "interrupted": 0}


def test_a_search_report_ranks_by_its_objective_and_names_the_selected_setting(tmp_path, capsys):
    """An Optuna search selects on validation accuracy: its report must not rank the trial with
    the better test accuracy first, and says what was selected before the table."""
    client, parent_id = fake_sweep(tmp_path)
    # lr 0.3: better on test (0.95) than lr 0.01 (mean 0.85), worse on validation (0.80 < 0.90)
    child = client.create_run(
        client.get_run(parent_id).info.experiment_id,
        tags={"mlflow.parentRunId": parent_id, "overrides": "optimizer.lr=0.3 seed=1"},
    ).info.run_id
    client.log_batch(
        child, metrics=[Metric("val/acc", 0.80, 0, 10), Metric("test/acc", 0.95, 0, 20)]
    )
    client.set_terminated(child, "FINISHED")
    client.set_tag(parent_id, "sweep.sweeper", "OptunaSweeper")
    client.log_param(parent_id, "best.optimizer.lr", "0.01")  # what sweeps.callback records
    client.log_metric(parent_id, "best_value", 0.90)

    report = write_report(client, parent_id, tmp_path / "reports", target_val_acc=0.9)
    ranked = report.table.dropna(subset=["rank"])
    assert list(ranked["optimizer.lr"]) == ["0.01", "0.3"]  # by validation, not by test
    text = (report.folder / "report.md").read_text()
    selected = "Selected: optimizer.lr=0.01 (val/acc 0.9000)."
    assert text.index(selected) < text.index("| rank |")
    assert selected in capsys.readouterr().out

    plain_client, plain_parent = fake_sweep(tmp_path / "grid")  # a grid sweep: no such line
    plain = write_report(plain_client, plain_parent, tmp_path / "grid", target_val_acc=0.9)
    assert "Selected:" not in (plain.folder / "report.md").read_text()


def test_a_second_report_never_replaces_the_first(tmp_path):
    """A stored report is a record: reporting again (another target, another local folder, as
    `compare.py --target-acc 0.95 --out DIR` does) adds report-2/ on the parent run."""
    client, parent_id = fake_sweep(tmp_path)
    write_report(client, parent_id, tmp_path / "sweep", target_val_acc=0.9)
    stored = tmp_path / "stored"

    def read_back(name: str) -> dict[str, bytes]:
        folder = Path(client.download_artifacts(parent_id, name, str(stored / name)))
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    first = read_back("report")
    second = write_report(client, parent_id, tmp_path / "elsewhere", target_val_acc=0.95)
    assert second.folder == tmp_path / "elsewhere" / "report-2"  # free on the parent and here
    assert {a.path for a in client.list_artifacts(parent_id)} == {"report", "report-2"}
    assert read_back("report") == first  # byte for byte as it was
    assert "≥ 0.9 |" in first["report.md"].decode()
    assert "≥ 0.95 |" in read_back("report-2")["report.md"].decode()
