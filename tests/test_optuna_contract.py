"""What the pipeline relies on in Optuna's private API, held on its own.

pipeline.sweeps.search.optuna_internals is the only module that touches Optuna's privates: a
trial's storage id, and a writable Trial made from it by a worker that did not ask the trial.
pyproject.toml caps optuna at the newest minor version this test passed on.
"""

from __future__ import annotations

import optuna

from pipeline.sweeps.search import optuna_internals


def test_a_trial_asked_elsewhere_is_written_through_its_storage_id(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    asking = optuna.create_study(study_name="s", storage=storage)
    asking.ask()  # trial 0, never written through this object again
    asked = asking.ask()  # trial 1
    other = optuna.load_study(study_name="s", storage=storage)  # another worker's view
    frozen = other.get_trials(deepcopy=False)[1]
    assert optuna_internals.trial_id(frozen) == optuna_internals.trial_id(asked)
    assert optuna_internals.trial_id(frozen) != optuna_internals.trial_id(
        other.get_trials(deepcopy=False)[0]
    )
    trial = optuna_internals.trial_by_id(other, optuna_internals.trial_id(frozen))
    trial.set_user_attr("owner", "worker-2")
    assert trial.suggest_float("lr", 1e-4, 1.0, log=True) > 0
    other.tell(trial.number, 0.5)
    again = optuna.load_study(study_name="s", storage=storage).get_trials()[1]
    assert again.user_attrs == {"owner": "worker-2"}
    assert "lr" in again.params and again.value == 0.5
