"""Faults during training: exception, SIGINT/SIGTERM, divergence, and resuming a stopped run."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import procs
import pytest
import torch
from conftest import make_cfg, run_in_process, runs_in, store_overrides
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.cli.train import main
from pipeline.model.classifier import EPOCH_SUMS_KEY, Classifier

STEPS = 100  # training batches per epoch in the signal tests (batch size 16)
LONG = [
    "optimizer=adam",
    "data.batch_size=16",
    f"trainer.limit_train_batches={STEPS}",
    "trainer.max_epochs=1000",  # far more than a test waits for: only a signal ends it
    "data.samples_per_group=320",  # 5 groups of 20 steps per epoch: a stop lands mid-epoch
]

QUIET = ["tracking.log_model=false"]


def client_for(store: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{store}/mlflow.db")


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
def test_exception_during_training_fails_the_run_with_its_traceback(tmp_path, monkeypatch, capsys):
    original, taken = Classifier._step, []

    def failing_step(self, x, y):
        if self.training:
            if len(taken) == 3:
                raise RuntimeError("injected fault at step 3")
            taken.append(1)
        return original(self, x, y)

    monkeypatch.setattr(Classifier, "_step", failing_step)
    store = tmp_path / "mlruns"
    # train.py in this process (a separate one is not the point): Hydra reports the error.
    status = run_in_process(
        *procs.QUICK, *store_overrides(store), "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}"
    )
    out, err = capsys.readouterr()
    assert status == 1
    assert "RuntimeError: injected fault at step 3" in err
    run_id = procs.run_id_of(out.splitlines())
    client = client_for(store)
    assert client.get_run(run_id).info.status == "FAILED"
    traceback = Path(client.download_artifacts(run_id, "traceback.txt", str(tmp_path)))
    assert "RuntimeError: injected fault at step 3" in traceback.read_text()
    assert "failing_step" in traceback.read_text()
    assert max(steps(client, run_id, "train/loss"), default=-1) < 3


def interrupt(folder: Path, signum: int) -> dict:
    """Train in a process, send `signum` once epoch 1 is done, record what it left behind."""
    store = folder / "mlruns"
    process = procs.start(store, *LONG)
    run_id = procs.run_id_of(procs.wait_for(process, "epoch 1/"))
    process.send_signal(signum)
    result = procs.finish(process, since=time.monotonic())
    client = client_for(store)
    run = client.get_run(run_id)
    checkpoints = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    last = None
    if "checkpoints/last.ckpt" in checkpoints:
        path = client.download_artifacts(run_id, "checkpoints/last.ckpt", str(folder))
        last = torch.load(path, map_location="cpu", weights_only=False)
    return {
        "store": store,
        "run_id": run_id,
        "result": result,
        "status": run.info.status,
        "last": last,
        "loss_steps": steps(client, run_id, "train/loss"),
        "val_steps": steps(client, run_id, "val/acc"),
    }


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> dict[int, dict]:
    """SIGTERM and SIGINT, each in a training process of its own, both at once (one per core);
    a thread per process signals it as soon as its epoch 1 is done."""
    signals = (signal.SIGTERM, signal.SIGINT)
    folders = [tmp_path_factory.mktemp(signal.Signals(s).name.lower()) for s in signals]
    with ThreadPoolExecutor(max_workers=len(signals)) as pool:
        return dict(zip(signals, pool.map(interrupt, folders, signals), strict=True))


@pytest.fixture(scope="module")
def sigtermed(interrupted):
    return interrupted[signal.SIGTERM]


def check_interrupted(stopped: dict, signum: int) -> None:
    result = stopped["result"]
    name = signal.Signals(signum).name
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert f"interrupted by {name}: MLflow run {stopped['run_id']} marked KILLED" in result.stderr
    assert f"python train.py resume={stopped['run_id']}" in result.stderr
    assert stopped["status"] == "KILLED"
    # The checkpoint is where training stood: past epoch 1, before the end of epoch 2 (the
    # signal came right after epoch 1; waiting for an epoch end would give 2 * STEPS).
    assert stopped["last"] is not None, "no checkpoints/last.ckpt artifact"
    assert STEPS <= stopped["last"]["global_step"] < 2 * STEPS
    assert stopped["val_steps"][0] == STEPS - 1  # epoch 1 complete, its metrics all there
    assert max(stopped["loss_steps"]) < stopped["last"]["global_step"]


@pytest.mark.slow
def test_sigterm_mid_training_ends_the_run_killed_with_a_checkpoint(sigtermed):
    check_interrupted(sigtermed, signal.SIGTERM)


@pytest.mark.slow
def test_ctrl_c_mid_training_ends_the_run_killed_with_a_checkpoint(interrupted):
    check_interrupted(interrupted[signal.SIGINT], signal.SIGINT)


@pytest.fixture(scope="module")
def resumed(sigtermed) -> dict:
    """`resume=<id>` of the SIGTERMed run, up to epoch 3. train.py in this process: the run's
    owner (the stopped process) is gone all the same."""
    store, run_id = sigtermed["store"], sigtermed["run_id"]
    out, err = io.StringIO(), io.StringIO()
    # Only the override: the rest (adam, batch size 16, embedded data) must come from the run.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = run_in_process(*store_overrides(store), f"resume={run_id}", "trainer.max_epochs=3")
    return {"status": status, "out": out.getvalue(), "err": err.getvalue()}


@pytest.mark.slow
def test_resume_continues_the_same_run(sigtermed, resumed):
    """`resume=<id>`: same run, the run's own config (adam, 1000 epochs) but for the override."""
    store, run_id = sigtermed["store"], sigtermed["run_id"]
    assert resumed["status"] == 0, resumed["err"][-3000:]
    assert f"MLflow run {run_id}: test/acc" in resumed["out"]
    client = client_for(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # One step axis, no overlap: every epoch's validation exactly once.
    loss_steps = steps(client, run_id, "train/loss")
    assert loss_steps == sorted(set(loss_steps))
    assert loss_steps[: len(sigtermed["loss_steps"])] == sigtermed["loss_steps"]
    assert steps(client, run_id, "val/acc") == [STEPS - 1, 2 * STEPS - 1, 3 * STEPS - 1]
    assert len(steps(client, run_id, "test/acc")) == 1
    # Params keep their first values; the override is recorded as a tag.
    assert run.data.params["trainer.max_epochs"] == "1000"
    assert run.data.params["optimizer.name"] == "adam"
    assert run.data.tags["resume.changed.trainer.max_epochs"] == "1000 -> 3"
    assert [k for k in run.data.tags if k.startswith("resume.changed.")] == [
        "resume.changed.trainer.max_epochs"
    ]
    config = Path(client.download_artifacts(run_id, "config.yaml", str(store.parent)))
    assert "name: adam" in config.read_text() and "max_epochs: 3" in config.read_text()
    # The name and the figure's title say what the run is now: 3 epochs, not 1000.
    assert "max_epochs=3" in run.info.run_name and "max_epochs=1000" not in run.info.run_name
    assert run.info.run_name.startswith("adam lr=") and "resume=" not in run.info.run_name
    png = client.download_artifacts(run_id, "curves.png", str(store.parent / "resumed"))
    assert Image.open(png).text["Title"].startswith(f"{run.info.run_name} · ")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    "stage, signal_at",
    [("train", 150), ("train", 190), ("val", 26)],
    ids=["mid-epoch", "in-the-epochs-last-group", "in-validation"],
)
def test_a_run_stopped_mid_epoch_and_resumed_records_the_unbroken_runs_numbers(
    stage, signal_at, signum, tmp_path, monkeypatch
):
    """A SIGTERM or SIGINT in epoch 2: in the middle of a group, in its last group or in its
    validation (25 minibatches: more than a training group); then `resume=<id>`. The resumed
    run must go on from the weights, optimizer state and step where it stopped, with the rest of
    that epoch's minibatches and that epoch's training sums: then every per-step loss and every
    epoch's figure is the unbroken run's. In this process, so that the signal lands at a known
    step."""
    config = [*LONG, "trainer.max_epochs=3", *QUIET, "probe.every_n_steps=7"]  # mid-group too
    main(make_cfg(tmp_path / "unbroken", *config))
    (unbroken,) = runs_in(tmp_path / "unbroken" / "mlruns")

    original, taken = Classifier._step, []

    def signalled_step(self, x, y):
        if self.training == (stage == "train"):
            taken.append(1)
            if len(taken) == signal_at:  # epoch 2: steps 100-199 in groups of 20; val 26-50
                os.kill(os.getpid(), signum)
        return original(self, x, y)

    monkeypatch.setattr(Classifier, "_step", signalled_step)
    with pytest.raises(SystemExit) as stopped:
        main(make_cfg(tmp_path / "stopped", *config))
    assert stopped.value.code == 128 + signum
    (run,) = runs_in(tmp_path / "stopped" / "mlruns")
    assert run.info.status == "KILLED"
    monkeypatch.setattr(Classifier, "_step", original)
    resume = [f"resume={run.info.run_id}"]
    monkeypatch.setattr("pipeline.training.run.hydra_overrides", lambda: resume)  # as train.py
    main(make_cfg(tmp_path / "stopped", *resume))

    keys = ("train/loss", "train/acc", "train/loss_epoch", "val/acc", "val/loss", "test/acc",
            "probe/val_acc")  # fmt: skip

    def history(store: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
        client = client_for(store)
        return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}

    resumed = history(tmp_path / "stopped" / "mlruns", run.info.run_id)
    assert resumed == history(tmp_path / "unbroken" / "mlruns", unbroken.info.run_id)
    # Training seconds go on from the checkpoint's (EpochTimer.state_dict), never back to 0.
    clock = client_for(tmp_path / "stopped" / "mlruns").get_metric_history(
        run.info.run_id, "probe/train_time_s"
    )
    seconds = [m.value for m in sorted(clock, key=lambda m: m.step)]
    assert len(seconds) == 3 * STEPS // 7 and seconds == sorted(set(seconds))
    assert client_for(tmp_path / "stopped" / "mlruns").get_run(run.info.run_id).info.status == (
        "FINISHED"
    )


@pytest.mark.slow
def test_resume_of_a_finished_run_needs_more_epochs(tmp_path, capsys):
    store = tmp_path / "mlruns"
    main(make_cfg(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=3", *QUIET))
    (run,) = runs_in(store)
    run_id = run.info.run_id
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(make_cfg(tmp_path, f"resume={run_id}"))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"resume={run_id}: the run has already trained 1 epochs" in message
    assert "trainer.max_epochs=6" in message
    assert client_for(store).get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    "overrides, shown",
    [
        (["optimizer.lr=100"], "the training loss reached"),  # finite but exploding
        (["optimizer.lr=1e30", "diverge_factor=null"], "the training loss reached nan"),
    ],
)
@pytest.mark.slow
def test_divergence_stops_the_run_early(overrides, shown, tmp_path, capsys):
    # Groups of 10 minibatches: the guard looks after each group (README, Speed).
    groups = ["data.samples_per_group=640", "trainer.log_every_n_steps=10"]
    cfg = make_cfg(tmp_path, "trainer.max_epochs=3", *QUIET, *groups, *overrides)
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 3
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: MLflow run ") and shown in message
    assert "marked FAILED, tag diverged=true" in message and "smaller optimizer.lr" in message
    client = client_for(tmp_path / "mlruns")
    (run,) = runs_in(tmp_path / "mlruns")
    assert run.info.status == "FAILED"
    assert run.data.tags["diverged"] == "true"
    # Stopped after the first group of 10 steps, not after 3 epochs of 71 steps.
    assert max(steps(client, run.info.run_id, "train/loss"), default=0) < 10
    # Where it stopped, as the message says, for the sweep figure's marker.
    step, loss = int(run.data.tags["diverged.step"]), float(run.data.tags["diverged.loss"])
    assert step == 10 and f"by step {step}," in message
    assert f"reached {loss:.4g} " in message


@pytest.mark.slow
def test_ckpt_path_continues_the_run_stored_in_the_checkpoint(tmp_path, monkeypatch):
    """`ckpt_path=<file>`: the run id inside the checkpoint names the run that goes on."""
    batches = ["trainer.limit_train_batches=5", "trainer.log_every_n_steps=1", *QUIET]
    main(make_cfg(tmp_path, "trainer.max_epochs=1", *batches))
    (run,) = runs_in(tmp_path / "mlruns")
    run_id, client = run.info.run_id, client_for(tmp_path / "mlruns")
    # Its only epoch is its best: last.ckpt is logged all the same (resume needs it elsewhere).
    logged = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"checkpoints/last.ckpt", "checkpoints/best-epoch=0.ckpt"} <= logged
    # A copy away from the run's folder: only the id stored in the file can lead to the run.
    ckpt = shutil.copy(tmp_path / "out" / "checkpoints" / "last.ckpt", tmp_path / "copy.ckpt")
    extra = [f"ckpt_path={ckpt}", "trainer.max_epochs=3"]
    monkeypatch.setattr("pipeline.training.run.hydra_overrides", lambda: extra)  # as train.py
    main(make_cfg(tmp_path, *batches, *extra))
    (resumed,) = runs_in(tmp_path / "mlruns")  # the same run, no new one
    assert resumed.info.run_id == run_id and resumed.info.status == "FINISHED"
    assert steps(client, run_id, "train/loss") == list(range(15))  # 3 epochs x 5, no overlap
    assert steps(client, run_id, "val/acc") == [4, 9, 14]
    assert resumed.data.params["trainer.max_epochs"] == "1"  # first value kept, not re-logged
    assert resumed.data.tags["resume.changed.trainer.max_epochs"] == "1 -> 3"
    assert resumed.data.tags["resume.checkpoint"] == str(Path(ckpt).resolve())


@pytest.mark.slow
def test_last_checkpoint_is_the_newest_epoch_even_without_a_new_best(tmp_path):
    """Resume starts from last.ckpt: it must be the latest epoch's, not the best epoch's."""
    frozen = ["optimizer.lr=1e-12", "trainer.max_epochs=3", "trainer.limit_train_batches=5"]
    main(make_cfg(tmp_path, *frozen, *QUIET))  # val/acc never improves after epoch 1
    folder = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-epoch=0.ckpt", "last.ckpt"]
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 15)


@pytest.mark.slow
def test_resume_from_an_older_checkpoint_records_each_step_once(tmp_path, monkeypatch):
    """As after a SIGKILL mid-epoch, the newest checkpoint is older than the run's last points:
    the steps trained again are not recorded twice."""
    frozen = ["optimizer.lr=1e-12", "trainer.limit_train_batches=5", "trainer.log_every_n_steps=1"]
    main(make_cfg(tmp_path, "trainer.max_epochs=2", *frozen, *QUIET))
    (run,) = runs_in(tmp_path / "mlruns")
    best = tmp_path / "out" / "checkpoints" / "best-epoch=0.ckpt"  # val/acc never improved
    older = shutil.copy(best, tmp_path / "epoch1.ckpt")  # ('=' in a path: not a Hydra override)
    extra = [f"ckpt_path={older}", "trainer.max_epochs=3"]
    monkeypatch.setattr("pipeline.training.run.hydra_overrides", lambda: extra)  # as train.py
    main(make_cfg(tmp_path, *frozen, *QUIET, *extra))
    client = client_for(tmp_path / "mlruns")
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert steps(client, run.info.run_id, "train/loss") == list(range(15))
    assert steps(client, run.info.run_id, "val/acc") == [4, 9, 14]
    assert len(steps(client, run.info.run_id, "test/acc")) == 2  # one per session


@pytest.mark.slow
def test_an_epoch_cut_short_by_max_steps_leaves_no_training_sums_to_resume(tmp_path):
    """`max_steps` ends training inside epoch 2; that epoch is over (its metrics are recorded),
    so its checkpoint must not hand its training sums to the next epoch of a resumed run."""
    cut = ["+trainer.max_steps=7", "trainer.limit_train_batches=5", "data.samples_per_group=64"]
    main(make_cfg(tmp_path, "trainer.max_epochs=3", *cut, *QUIET))
    last = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 7
    assert EPOCH_SUMS_KEY not in last


@pytest.mark.slow
def test_sigterm_while_the_model_is_logged_ends_cleanly_and_suggests_what_works(
    tmp_path, monkeypatch, capsys
):
    """A SIGTERM after training (here: as the model is being logged) lets the model's logging
    finish (not PENDING forever), ends the run KILLED, and suggests a resume that works."""
    import os
    import signal

    from mlflow.entities import LoggedModelStatus

    from pipeline.tracking import models

    log_model = models.log_model

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # recorded; the logging goes on
        return log_model(*args, **kwargs)

    monkeypatch.setattr(models, "log_model", signalled)
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "tracking.log_model=true"]
    with pytest.raises(SystemExit) as exit_info:
        main(make_cfg(tmp_path, *tiny))
    assert exit_info.value.code == 143
    message = capsys.readouterr().err.strip().splitlines()[-1]
    (run,) = runs_in(tmp_path / "mlruns")
    run_id = run.info.run_id
    assert run.info.status == "KILLED"
    assert "after training" in message
    client = client_for(tmp_path / "mlruns")
    logged = client.search_logged_models([run.info.experiment_id])
    assert [m.status for m in logged] == [LoggedModelStatus.READY]
    suggested = message.split("python train.py ")[-1].split()
    assert suggested == [f"resume={run_id}", "trainer.max_epochs=6"]
    monkeypatch.setattr(models, "log_model", log_model)
    overrides = [*suggested, "trainer.limit_train_batches=3"]
    monkeypatch.setattr("pipeline.training.run.hydra_overrides", lambda: overrides)
    main(make_cfg(tmp_path, *overrides))  # what it suggests works
    assert client.get_run(run_id).info.status == "FINISHED"
