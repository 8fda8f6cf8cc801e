"""experiment=fair_comparison: stages and tags, selection on validation only, pairing, resume
after a kill, and workers sharing a study (small budgets: 2 optimizers, 2 trials, 2 seeds)."""

from __future__ import annotations

import csv
import math
import multiprocessing
import shutil
import signal
import sys
from pathlib import Path

import optuna
import procs
import pytest
from conftest import ROOT, _empty_store_db, run_in_process, runs_in, store_overrides
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.sweeps.common import JOB_KEY_TAG, job_key
from pipeline.sweeps.protocol.sweeper import ProtocolSweeper, Replicate, Tune, target_for
from pipeline.sweeps.search import study as tickets
from pipeline.sweeps.search.space import distributions

MULTIRUN = [sys.executable, str(ROOT / "train.py"), "-m"]
TINY = ["data.source=embedded", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
        "tracking.log_model=false", "probe.every_n_steps=2"]  # fmt: skip
# One job at a time, in this process (the experiment's default is 2 joblib workers): the order
# of runs is fixed, so a test can stop the protocol at a known run.
PROTOCOL = ["experiment=fair_comparison", "hydra/launcher=basic",
            "hydra.sweeper.optimizers=[sgd,adam]", "hydra.sweeper.trials=2",
            "hydra.sweeper.replicate_seeds=[1,2]", "hydra.sweeper.searches=1"]  # fmt: skip
STAGES = {"default": 2, "tune": 2, "replicate": 2}  # runs per optimizer


def protocol_runs(store: Path):
    """(client, the one parent, its children)."""
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = runs_in(store)
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    return client, parent, children


def history(client: MlflowClient, run, key: str) -> list[float]:
    points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return [m.value for m in points]


def table(client: MlflowClient, children) -> dict[tuple, tuple]:
    """What the report is made of, per run: everything but times and ids."""
    rows = {}
    for r in children:
        t = r.data.tags
        key = (t["protocol.stage"], t["protocol.optimizer"], t.get("protocol.trial"),
               t["protocol.seed"])  # fmt: skip
        assert key not in rows, f"two runs for {key}"
        rows[key] = (
            r.info.status,
            r.data.params["optimizer.lr"],
            tuple(history(client, r, "val/acc")),
            tuple(history(client, r, "train/loss")),
            r.data.metrics.get("test/acc"),
        )
    return rows


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """One uninterrupted protocol, run in this process: (store, sweep folder)."""
    tmp = tmp_path_factory.mktemp("unbroken")
    store = tmp / "mlruns"
    status = run_in_process("-m", *PROTOCOL, *TINY, *store_overrides(store),
                            f"hydra.sweep.dir={tmp}/sweep")  # fmt: skip
    assert status == 0
    return store, tmp / "sweep"


@pytest.mark.slow
def test_protocol_runs_each_stage_as_tagged_children_of_one_parent(unbroken):
    store, _ = unbroken
    client, parent, children = protocol_runs(store)
    assert parent.info.status == "FINISHED"
    pid = parent.data.tags["protocol.id"]
    assert parent.data.params["protocol.optimizers"] == "sgd,adam"
    assert parent.data.params["protocol.trials"] == "2"
    assert parent.data.params["protocol.tuning_seeds"] == "0"
    assert parent.data.params["protocol.replicate_seeds"] == "1,2"
    assert parent.data.params["protocol.objective"] == "best val/acc over epochs"
    assert parent.data.params["protocol.target_val_acc"] == "0.9"  # MNIST's own (TARGETS)
    assert parent.data.params["protocol.tuning_overrides"] == (
        "tracking.log_model=false tracking.log_curves=false probe.every_n_steps=0"
    )

    counts: dict[tuple[str, str], int] = {}
    for r in children:
        t = r.data.tags
        assert r.info.status == "FINISHED" and t["protocol.id"] == pid
        assert (
            t["optimizer"] == t["protocol.optimizer"]
            and t["protocol.seed"] == r.data.params["seed"]
        )
        counts[t["protocol.stage"], t["optimizer"]] = (
            counts.get((t["protocol.stage"], t["optimizer"]), 0) + 1
        )
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "checkpoints" in artifacts and "config.yaml" in artifacts
        if t["protocol.stage"] == "tune":
            assert t["protocol.trial"] in ("0", "1") and r.data.params["seed"] == "0"
            assert not any(k.startswith("test/") for k in r.data.metrics)  # test split unseen
            assert "curves.png" not in artifacts  # hydra.sweeper.tuning_overrides
            assert r.data.params["tracking.log_curves"] == "False"
            assert "probe/val_acc" not in r.data.metrics  # no step probe: tuning_overrides
        else:
            assert "protocol.trial" not in t and r.data.params["seed"] in ("1", "2")
            assert "test/acc" in r.data.metrics
            assert "curves.png" in artifacts
            # The step probe after steps 2, 4, 6 (of 3 a epoch): steps to target between epochs.
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "probe/val_acc")]
            assert sorted(steps) == [1, 3, 5]
    assert counts == {(s, o): n for s, n in STAGES.items() for o in ("sgd", "adam")}
    (report,) = unbroken[1].glob("report*/report.md")
    assert "the first step probe ≥ 0.9: accuracy on the first 400 validation examples every 2 " \
        "optimizer steps" in report.read_text()  # fmt: skip

    # Defaults are the presets'; replicates use the tuning trial with the best validation accuracy.
    for opt, default_lr in (("sgd", "0.01"), ("adam", "0.001")):
        mine = [r for r in children if r.data.tags["optimizer"] == opt]
        tune = [r for r in mine if r.data.tags["protocol.stage"] == "tune"]
        best = max(tune, key=lambda r: max(history(client, r, "val/acc")))
        for r in mine:
            stage = r.data.tags["protocol.stage"]
            if stage == "default":
                assert r.data.params["optimizer.lr"] == default_lr
            elif stage == "replicate":
                assert r.data.params["optimizer.lr"] == best.data.params["optimizer.lr"]
                assert r.data.tags["protocol.selected_trial"] == best.data.tags["protocol.trial"]
        assert parent.data.tags[f"protocol.selected.{opt}"].startswith(
            f"trial {best.data.tags['protocol.trial']}: optimizer.lr="
        )

    # One study per stage and optimizer, each holding exactly its budget of trials.
    storage = f"sqlite:///{store}/optuna.db"
    for opt in ("sgd", "adam"):
        for suffix in ("-default", "", "-replicate"):
            study = optuna.load_study(study_name=f"{pid}-{opt}{suffix}", storage=storage)
            assert [(t.number, t.state.name) for t in study.trials] == [
                (0, "COMPLETE"), (1, "COMPLETE")]  # fmt: skip


@pytest.mark.slow
def test_a_seed_gives_every_optimizer_the_same_weights_and_data_order(unbroken):
    _, _, children = protocol_runs(unbroken[0])
    by_seed: dict[str, set] = {}
    for r in children:
        t = r.data.tags
        by_seed.setdefault(r.data.params["seed"], set()).add(
            (t["pairing.init_sha"], t["pairing.order_sha"])
        )
    assert set(by_seed) == {"0", "1", "2"}
    assert all(len(pairs) == 1 for pairs in by_seed.values()), by_seed  # same for all optimizers
    assert len({pairs.pop() for pairs in by_seed.values()}) == 3  # and the seeds differ


class Recording:
    """An MlflowClient that notes which metrics are read."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.read = client, []

    def get_metric_history(self, run_id, key):
        self.read.append(key)
        return self.client.get_metric_history(run_id, key)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_selection_never_reads_test_metrics(tmp_path):
    """A planted trial with the best test accuracy but not the best validation accuracy loses."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("e", (tmp_path / "artifacts").as_uri())
    parent_id = client.create_run(experiment, tags={"sweep.role": "parent"}).info.run_id
    sweeper = ProtocolSweeper(["sgd"], 2, [0], [1, 2], {}, None)
    sweeper.protocol_id, sweeper.base, sweeper.parent_id = "p", ["data.source=embedded"], parent_id
    sweeper.client = recording = Recording(client)
    sweeper.sampler_cfg = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}
    url = f"sqlite:///{tmp_path}/optuna.db"
    space = distributions({"optimizer.lr": "tag(log, interval(1e-4, 1.0))"}, "s")
    tune = Tune(sweeper, "sgd", tickets.open_study(url, "p-sgd"), 2, space)
    replicate = Replicate(sweeper, "sgd", tickets.open_study(url, "p-sgd-r"), 2, tune)
    assert not replicate.ready()

    planted = {0: ([0.50, 0.60], 0.99), 1: ([0.80, 0.70], 0.40)}  # val/acc per epoch, test/acc
    lrs = {}
    for number, (val, test) in planted.items():
        ticket = tickets.claim(tune.study, tune.size(), tune.suggest)
        assert ticket.number == number
        lrs[number] = ticket.params["optimizer.lr"]
        (job,) = tune.jobs(ticket)
        assert "trainer.limit_test_batches=0" in job
        tags = {"mlflow.parentRunId": parent_id, JOB_KEY_TAG: job_key(job)}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        metrics = [Metric("val/acc", v, 0, i) for i, v in enumerate(val)]
        client.log_batch(run_id, metrics=[*metrics, Metric("test/acc", test, 0, 9)])
        client.set_terminated(run_id, "FINISHED")
        tickets.tell(ticket, sweeper.outcome([job]))

    assert set(recording.read) == {"val/acc"}  # nothing else was read to judge a trial
    assert [t.value for t in tune.study.trials] == [0.60, 0.80]  # best val/acc over epochs
    assert replicate.ready() and replicate.best().number == 1
    ticket = tickets.claim(replicate.study, replicate.size())
    (job,) = replicate.jobs(ticket)
    assert f"optimizer.lr={lrs[1]!r}" in job and "seed=1" in job
    assert "++tracking.tags.protocol.selected_trial=1" in job


def _claim_all(url: str, name: str, size: int, queue) -> None:
    study = tickets.open_study(url, name)
    while (ticket := tickets.claim(study, size)) is not None:
        queue.put(ticket.number)
        tickets.tell(ticket, float(ticket.number))


def test_workers_on_one_study_run_each_counted_trial_once(tmp_path):
    """Four processes draw tickets from one study at once: every number below the budget is run
    exactly once; numbers drawn past it are FAIL and not counted."""
    url, size = f"sqlite:///{tmp_path}/optuna.db", 9
    tickets.open_study(url, "s")  # its tables, before the workers start
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_claim_all, args=(url, "s", size, queue)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    ran = [queue.get(timeout=5) for _ in range(size)]
    assert queue.empty() and sorted(ran) == list(range(size))
    study = optuna.load_study(study_name="s", storage=url)
    assert tickets.finished(study, size)
    assert [t.value for t in tickets.counted(study, size)] == [float(n) for n in range(size)]
    for extra in study.trials[size:]:  # at most one per worker
        assert extra.state.name == "FAIL" and extra.user_attrs["counted"] is False
    assert len(study.trials) <= size + len(workers)


def started_runs(process, count: int) -> list[str]:
    """Read stdout until `count` more runs have started; their ids."""
    ids: list[str] = []
    while len(ids) < count:
        words = procs.wait_for(process, "MLflow run ")[-1].split()
        if words[3].startswith("started"):  # 'MLflow run <id> started: ...'
            ids.append(words[2])
    return ids


@pytest.mark.slow
def test_a_killed_protocol_continues_to_the_same_runs_and_results(tmp_path, unbroken):
    """SIGTERM in a tuning run's second epoch, then SIGKILL just after a later run starts: the
    same command afterwards ends with the runs and numbers of the uninterrupted protocol."""
    store = tmp_path / "mlruns"
    args = [*PROTOCOL, *TINY, *store_overrides(store)]

    first = procs.start(store, *args, f"hydra.sweep.dir={tmp_path}/s1", prefix=MULTIRUN,
                        quick=False)  # fmt: skip
    started_runs(first, 5)  # 4 default runs, then the first tuning trial
    procs.wait_for(first, "epoch 1/2")
    first.send_signal(signal.SIGTERM)
    result = procs.finish(first)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    _, parent, children = protocol_runs(store)
    assert parent.info.status == "KILLED"
    killed = [r for r in children if r.info.status == "KILLED"]
    assert [r.data.tags["protocol.stage"] for r in killed] == ["tune"]

    second = procs.start(store, *args, f"hydra.sweep.dir={tmp_path}/s2", prefix=MULTIRUN,
                         quick=False)  # fmt: skip
    assert started_runs(second, 1) == [killed[0].info.run_id]  # the same run goes on
    started_runs(second, 2)
    second.kill()  # SIGKILL: a run left RUNNING by a dead writer, a trial left RUNNING
    second.wait()
    procs.finish(second)

    third = procs.start(store, *args, f"hydra.sweep.dir={tmp_path}/s3", prefix=MULTIRUN,
                        quick=False)  # fmt: skip
    result = procs.finish(third, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    client, parent, children = protocol_runs(store)
    ref_client, ref_parent, ref_children = protocol_runs(unbroken[0])
    assert parent.info.status == "FINISHED" and len(children) == len(ref_children) == 12
    assert parent.data.tags["protocol.id"] == ref_parent.data.tags["protocol.id"]
    assert table(client, children) == table(ref_client, ref_children)
    assert int(parent.data.tags["sweep.resumes"]) == 2
    resumed = client.get_run(killed[0].info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resume.count"] == "1"
    storage = f"sqlite:///{store}/optuna.db"
    for summary in optuna.get_all_study_summaries(storage):  # no trial counted twice
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        assert [t.number for t in study.trials] == [0, 1], summary.study_name
        assert {t.state.name for t in study.trials} == {"COMPLETE"}
    for key in ("protocol.selected.sgd", "protocol.selected.adam"):
        assert parent.data.tags[key] == ref_parent.data.tags[key]
    # The same report, times aside (the last attempt writes it, as the unbroken protocol did).
    assert report_table(tmp_path / "s3") == report_table(unbroken[1])


def report_table(sweep_dir: Path) -> list[dict[str, str]]:
    (path,) = sweep_dir.glob("report*/report.csv")  # a second worker: report-2/
    with open(path) as f:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_two_workers_share_one_search_without_losing_or_repeating_a_trial(tmp_path):
    """Two `hparams_search=optuna_lr` commands at once on one store: one parent, one study,
    each of the budget's trials run once."""
    store = tmp_path / "mlruns"
    store.mkdir()  # a fresh store's tables, made once (two processes creating them race)
    shutil.copy(_empty_store_db(), store / "mlflow.db")
    one_epoch = [a.replace("max_epochs=2", "max_epochs=1") for a in TINY]
    args = ["hparams_search=optuna_lr", "optimizer=sgd", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.poll_s=0.5", *one_epoch, *store_overrides(store)]  # fmt: skip
    workers = [
        procs.start(store, *args, f"hydra.sweep.dir={tmp_path}/w{i}", prefix=MULTIRUN, quick=False)
        for i in range(2)
    ]
    results = [procs.finish(w, timeout=600) for w in workers]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    client, parent, children = protocol_runs(store)
    trials = sorted(int(r.data.tags["optuna.trial"]) for r in children)
    assert trials == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in children)
    assert all("Already done" not in r.stdout for r in results)
    ran = [sum(line.split()[3:4] == ["started:"] for line in r.stdout.splitlines()
               if line.startswith("MLflow run ")) for r in results]  # fmt: skip
    assert sum(ran) == 4, ran
    name = parent.data.tags["optuna.study"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{store}/optuna.db")
    counted = tickets.counted(study, 4)
    assert [t.state.name for t in counted] == ["COMPLETE"] * 4
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    for t in counted:  # each trial's value is its own run's best val/acc
        assert t.value == pytest.approx(max(history(client, by_trial[t.number], "val/acc")))
    assert all(t.user_attrs.get("counted") is False for t in study.trials[4:])
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/jobs"] == 4
    assert math.isclose(parent.data.metrics["best_value"], max(t.value for t in counted))


@pytest.mark.slow
def test_bad_protocol_settings_are_refused_before_anything_exists(tmp_path, capsys):
    store = tmp_path / "mlruns"
    bad = [*PROTOCOL[:-1], "hydra.sweeper.replicate_seeds=[0,1]"]  # 0 is the tuning seed
    status = run_in_process("-m", *bad, *TINY, *store_overrides(store))
    assert status == 2
    assert "none of them a tuning seed" in capsys.readouterr().err
    assert runs_in(store) == []
    # A tuning override naming no key of the config: refused up front, not as 2 failed trials.
    status = run_in_process("-m", *PROTOCOL, "hydra.sweeper.target_val_acc=90", *TINY,
                            *store_overrides(store))  # fmt: skip
    assert status == 2
    assert "hydra.sweeper.target_val_acc=90.0: an accuracy in (0, 1]" in capsys.readouterr().err
    assert runs_in(store) == []
    typo = "hydra.sweeper.tuning_overrides=['tracking.log_curvs=0']"
    status = run_in_process("-m", *PROTOCOL, typo, *TINY, *store_overrides(store))
    assert status == 2
    assert "hydra.sweeper.tuning_overrides=['tracking.log_curvs=0']" in capsys.readouterr().err
    assert runs_in(store) == []


def test_the_validation_target_is_the_data_sets_own_unless_set():
    assert target_for(None, "mnist") == 0.9
    assert target_for(None, "fashion_mnist") == 0.85  # 0.9 is out of reach in 5 epochs
    assert target_for(0.8, "fashion_mnist") == 0.8


def test_repeated_searches_each_select_and_replicate_on_their_own_seeds(tmp_path):
    """hydra.sweeper.searches=2: each optimizer searched twice (own study, sampler seed and
    seeds), each search's selection replicated; the report's intervals cover the searches."""
    store, sweep = tmp_path / "mlruns", tmp_path / "sweep"
    overrides = [*PROTOCOL, "hydra.sweeper.trials=1", "hydra.sweeper.replicate_seeds=[1]",
                 "hydra.sweeper.searches=2"]  # fmt: skip
    status = run_in_process("-m", *overrides, *TINY, *store_overrides(store),
                            f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert status == 0
    _, parent, children = protocol_runs(store)
    assert parent.data.params["protocol.searches"] == "2"
    seen = sorted(
        (r.data.tags["protocol.stage"], r.data.tags["optimizer"],
         r.data.tags.get("protocol.search", "0"), r.data.params["seed"])
        for r in children
    )  # fmt: skip
    expected = sorted(
        [("default", o, "0", "1") for o in ("sgd", "adam")]
        + [("tune", o, s, seed) for o in ("sgd", "adam") for s, seed in (("0", "0"), ("1", "1000"))]
        + [("replicate", o, s, seed) for o in ("sgd", "adam")
           for s, seed in (("0", "1"), ("1", "1001"))]
    )  # fmt: skip
    assert seen == expected
    pid = parent.data.tags["protocol.id"]
    assert {"protocol.selected.sgd", "protocol.selected.sgd.search1"} <= set(parent.data.tags)
    storage = f"sqlite:///{store}/optuna.db"
    for name in (f"{pid}-adam-search1", f"{pid}-adam-search1-replicate"):
        assert len(optuna.load_study(study_name=name, storage=storage).trials) == 1
    text = (sweep / "report" / "report.md").read_text()
    assert "2 search(es) of 1 trials" in text
    assert "tuned test acc [95% CI over searches, seeds, test examples]" in text


def test_a_failed_report_is_no_success(tmp_path, monkeypatch, capsys):
    """Issue 25 case 7: the report step fails; the runs stay recorded, but the command says so
    in one `error:` line, never "finished ... ok", and exits 1."""
    import pipeline.sweeps.protocol.report as report

    def broken(*args, **kwargs):
        raise ValueError("needs two nonzero differences")

    monkeypatch.setattr(report, "write_protocol_report", broken)
    overrides = [*PROTOCOL, "hydra.sweeper.optimizers=[sgd]", "hydra.sweeper.trials=1",
                 "hydra.sweeper.replicate_seeds=[1]"]  # fmt: skip
    status = run_in_process("-m", *overrides, *TINY, *store_overrides(tmp_path / "mlruns"),
                            f"hydra.sweep.dir={tmp_path}/sweep")  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 1
    assert "finished:" not in out and "ran its jobs, but its report failed" in out
    assert "error: the fair comparison's runs are recorded but its report failed" in err
    assert "needs two nonzero differences" in err
    _, parent, children = protocol_runs(tmp_path / "mlruns")
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
