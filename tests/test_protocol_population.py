"""experiment=fair_comparison trains its batches as populations by default: the same search,
the same selections, the same runs and report as the protocol run one job at a time."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from conftest import run_in_process, store_overrides
from test_protocol import TINY, protocol_runs, table

from pipeline.sweeps.protocol.sweeper import Tune
from pipeline.sweeps.search import space as spaces
from pipeline.sweeps.search import study as tickets

pytestmark = pytest.mark.slow

# TPE's random start-up cut to 2 of 4 trials, so that trials 2 and 3 are TPE's own draws.
PROTOCOL = ["experiment=fair_comparison", "hydra.sweeper.optimizers=[sgd,adam]",
            "hydra.sweeper.trials=4", "+hydra.sweeper.sampler.n_startup_trials=2",
            "hydra.sweeper.replicate_seeds=[1,2]", "hydra.sweeper.searches=1"]  # fmt: skip


def protocol(tmp: Path, *extra: str) -> tuple[Path, str]:
    store = tmp / "mlruns"
    args = [*PROTOCOL, *TINY, *store_overrides(store), f"hydra.sweep.dir={tmp}/sweep", *extra]
    assert run_in_process("-m", *args) == 0
    return store, (tmp / "sweep" / "report" / "report.md").read_text()


def trials(store: Path) -> dict[str, list[tuple[int, str, dict, float | None]]]:
    """Every study's trials: (number, state, params, value)."""
    url = f"sqlite:///{store}/optuna.db"
    found = {}
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        found[summary.study_name] = [
            (t.number, t.state.name, t.params, t.value) for t in study.get_trials()
        ]
    return found


def test_populations_run_the_same_search_as_one_job_at_a_time(tmp_path, capsys):
    pop_store, pop_report = protocol(tmp_path / "pop")
    captured = capsys.readouterr()
    output = captured.out + captured.err
    one_store, one_report = protocol(
        tmp_path / "one", "hydra/launcher=basic", "hydra.sweeper.n_jobs=1"
    )
    # The start-up trials and both optimizers' defaults share a batch; TPE's draws wait.
    assert "Jobs #0-#7: trials 0, 1, 0, 1, 0, 1, 0, 1 of" in output
    assert "Jobs #8-#9: trials 2, 2 of" in output and "Jobs #10-#11: trials 3, 3 of" in output

    assert trials(pop_store) == trials(one_store)  # same draws, same values, same selections
    client, parent, children = protocol_runs(pop_store)
    one_client, one_parent, one_children = protocol_runs(one_store)
    assert table(client, children) == table(one_client, one_children)
    # A wave of TPE's draws holds one trial per optimizer here: those run alone.
    alone = {r.info.run_id for r in children if not r.data.tags.get("population")}
    assert len(alone) == 4 and len(children) == 16
    populations = [r.data.tags["population"] for r in children if r.info.run_id not in alone]
    assert sorted(populations.count(p) for p in set(populations)) == [2] * 6
    assert not any(r.data.tags.get("population") for r in one_children)
    selected = {k: v for k, v in parent.data.tags.items() if k.startswith("protocol.selected")}
    assert selected and selected == {
        k: v for k, v in one_parent.data.tags.items() if k.startswith("protocol.selected")
    }
    assert same_report(pop_report) == same_report(one_report)


def same_report(text: str) -> list[str]:
    """The report but the parent run's id and the sweep's folder."""
    return re.sub(r"[0-9a-f]{32}", "<run>", text).replace("/pop/", "/one/").splitlines()


class Study:  # what Tune.ready reads of a study
    def __init__(self, states: list[str]) -> None:
        self.states = states

    def get_trials(self, deepcopy: bool = False):
        return [
            optuna.trial.create_trial(state=getattr(optuna.trial.TrialState, s), value=0.5)
            if s == "COMPLETE"
            else _running(i)
            for i, s in enumerate(self.states)
        ]


def _running(number: int):
    trial = optuna.trial.FrozenTrial(
        number=number, state=optuna.trial.TrialState.RUNNING, value=None,
        datetime_start=None, datetime_complete=None, params={}, distributions={},
        user_attrs={tickets.OWNER_ATTR: tickets.me()}, system_attrs={}, intermediate_values={},
        trial_id=number,
    )  # fmt: skip
    return trial


@pytest.mark.parametrize(
    ("sampler", "states", "ready"),
    [
        ({"_target_": "optuna.samplers.TPESampler"}, ["RUNNING"] * 9, True),  # start-up: at once
        ({"_target_": "optuna.samplers.TPESampler"}, ["COMPLETE"] * 9 + ["RUNNING"], False),
        ({"_target_": "optuna.samplers.TPESampler"}, ["COMPLETE"] * 10, True),
        ({"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 2}, ["RUNNING"], True),
        (
            {"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 2},
            ["COMPLETE", "RUNNING"],
            False,
        ),  # noqa: E501
        ({"_target_": "optuna.samplers.RandomSampler"}, ["RUNNING"] * 11, True),
        ({"_target_": "optuna.samplers.CmaEsSampler"}, [], True),
        ({"_target_": "optuna.samplers.CmaEsSampler"}, ["RUNNING"], False),
    ],
)
def test_a_draw_that_needs_earlier_results_waits_for_them(sampler, states, ready):
    tune = Tune.__new__(Tune)
    tune.study, tune._size, tune.sampler_cfg = Study(states), 12, sampler
    assert tune.ready() is ready
    assert spaces.independent_draws(sampler, 12) in (0, 2, 10, 12)
