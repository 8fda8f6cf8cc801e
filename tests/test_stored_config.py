"""A config read back from a store is data (issue 25, case 3): a `config.yaml` artifact that
asks for code conf/ and the command line do not name is refused with one line, before any run
is touched, and the code it names never runs. Each payload would create a marker file."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from conftest import ONE_EPOCH, make_cfg, run_in_process, runs_in, store_overrides
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline.config import stored
from pipeline.errors import UntrustedConfig

TINY = [*ONE_EPOCH, "tracking.log_model=false"]


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


def payloads(marker: Path, pickled: Path) -> dict[str, tuple[str, dict]]:
    """name -> (where in the config, what is put there): each would touch `marker` if built."""
    touch = f"touch {marker}"
    return {
        "torch.load": ("model.x", {"_target_": "torch.load", "f": str(pickled),
                                   "weights_only": False}),
        "os.system": ("model.x", {"_target_": "os.system", "command": touch}),
        "eval": ("data.x", {"_target_": "builtins.eval",
                            "_args_": [f"__import__('os').system('{touch}')"]}),
        "in a list": ("trainer.callbacks", [{"_target_": "os.system", "_args_": [touch]}]),
        "deeper": ("model.a", {"b": {"c": [{"d": {"_target_": "os.system", "_args_": [touch]}}]}}),
        "the model replaced": ("model._target_", "os.system"),
        "_args_ on the model": ("model._args_", [{"_target_": "os.system", "_args_": [touch]}]),
        "a partial optimizer": ("optimizer._target_", "subprocess.Popen"),
        "_partial_ on the model": ("model._partial_", True),
        "_recursive_ off": ("trainer._recursive_", False),
        "an env secret": ("model.activation", "${oc.env:HOME}"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """A store with one FINISHED SGD run of one epoch."""
    root = tmp_path_factory.mktemp("finished")
    store = root / "mlruns"
    assert run_in_process(*TINY, *store_overrides(store), f"hydra.run.dir={root / 'out'}") == 0
    (run,) = runs_in(store)
    return store, run.info.run_id


def artifact_file(store: Path, run_id: str) -> Path:
    uri = MlflowClient(f"sqlite:///{store}/mlflow.db").get_run(run_id).info.artifact_uri
    return Path(unquote(urlparse(uri).path)) / "config.yaml"


def put(config: dict, where: str, value: object) -> None:
    *parents, leaf = where.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[leaf] = value


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    list(payloads(Path("m"), Path("p"))),
)
def test_a_tampered_config_is_refused_and_runs_nothing(finished, name, tmp_path, capsys):
    store, run_id = finished
    marker, pickled = tmp_path / "pwned", tmp_path / "payload.pkl"
    pickled.write_bytes(pickle.dumps(Payload(marker)))
    where, value = payloads(marker, pickled)[name]
    path = artifact_file(store, run_id)
    original = path.read_text()
    config = yaml.safe_load(original)
    put(config, where, value)
    path.write_text(yaml.safe_dump(config))
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    before = client.get_run(run_id)
    try:
        capsys.readouterr()
        code = run_in_process(
            f"resume={run_id}", "trainer.max_epochs=2", *store_overrides(store),
            f"hydra.run.dir={tmp_path / 'out'}",
        )  # fmt: skip
        err = capsys.readouterr().err
    finally:
        path.write_text(original)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "stored config.yaml" in lines[0] and f"resume={run_id}" in lines[0]
    assert not marker.exists()
    after = client.get_run(run_id)
    assert (after.info.status, after.info.end_time) == ("FINISHED", before.info.end_time)
    for part in ("params", "tags", "metrics"):
        assert getattr(after.data, part) == getattr(before.data, part)
    assert not (tmp_path / "out" / "checkpoints").exists()


def stored_text(cfg_overrides: list[str], tmp_path: Path) -> bytes:
    """config.yaml as a run of `cfg_overrides` stores it (tracking.lifecycle.log_config)."""
    cfg = make_cfg(tmp_path / "old", *cfg_overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    return yaml.safe_dump(resolved).encode()


def test_a_preset_optimizer_is_taken_from_the_store(tmp_path):
    """A run of optimizer=adam resumed with the default composition (sgd): adam's preset
    `_target_` is conf/'s own, so it is accepted."""
    text = stored_text(["optimizer=adam"], tmp_path)
    now = make_cfg(tmp_path / "new")
    assert stored.parse(text, now, "resume=x").optimizer._target_ == "torch.optim.Adam"


def test_a_class_of_ones_own_needs_the_command_line(tmp_path):
    """A custom optimizer class is accepted when this command line names it, not otherwise."""
    text = stored_text(["optimizer._target_=torch.optim.ASGD"], tmp_path)
    with pytest.raises(UntrustedConfig, match=r"optimizer\._target_=torch\.optim\.ASGD"):
        stored.parse(text, make_cfg(tmp_path / "a"), "resume=x")
    mine = make_cfg(tmp_path / "b", "optimizer._target_=torch.optim.ASGD")
    assert stored.parse(text, mine, "resume=x").optimizer._target_ == "torch.optim.ASGD"


@pytest.mark.parametrize(
    "text, says",
    [
        (b"!!python/object/apply:os.system ['touch x']", "not plain YAML"),
        (b"- a\n- b\n", "not a mapping"),
        (b"a: &a [1,1,1,1,1,1,1,1,1]\n" + b"".join(
            f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n".encode()
            for p, c in zip("abcdefg", "bcdefgh", strict=True)), "more than"),
        (b"model:\n  '${oc.env:HOME}': 1\n", "interpolation"),
        (b"model:\n  _target_: \"os.system\\nerror: fake\"\n", r"os.system\\nerror"),
    ],
)  # fmt: skip
def test_what_is_not_data_is_refused(text, says, tmp_path):
    with pytest.raises(UntrustedConfig, match=says) as caught:
        stored.parse(text, make_cfg(tmp_path), "resume=x")
    assert "\n" not in str(caught.value)  # one line, whatever the store holds


@pytest.mark.slow
def test_a_sweep_neither_continues_nor_deletes_a_tampered_job(tmp_path, capsys):
    """A sweep run again finds its job's KILLED run with a planted config.yaml: the job fails
    with one line, its run is kept as it was (not continued, not deleted), nothing runs."""
    store, marker = tmp_path / "mlruns", tmp_path / "pwned"
    args = ["-m", "seed=1", *TINY, *store_overrides(store), f"hydra.sweep.dir={tmp_path / 's'}"]
    assert run_in_process(*args) == 0
    (child,) = [r for r in runs_in(store) if "mlflow.parentRunId" in r.data.tags]
    run_id = child.info.run_id
    path = artifact_file(store, run_id)
    config = yaml.safe_load(path.read_text())
    put(config, "model.x", {"_target_": "os.system", "command": f"touch {marker}"})
    path.write_text(yaml.safe_dump(config))
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    client.set_terminated(run_id, "KILLED")  # as a killed job leaves it
    capsys.readouterr()
    assert run_in_process(*args) != 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "stored config.yaml" in lines[0], captured.err
    assert "Deleting" not in captured.out and "Continuing" not in captured.out
    assert not marker.exists()
    after = client.get_run(run_id)
    assert (after.info.status, after.info.lifecycle_stage) == ("KILLED", "active")
    assert [r.info.run_id for r in runs_in(store) if "mlflow.parentRunId" in r.data.tags] == [
        run_id
    ]
