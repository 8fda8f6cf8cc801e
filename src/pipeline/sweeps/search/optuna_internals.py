"""Every use of Optuna's private API, in one place (tests/test_optuna_contract.py holds each).

A trial asked by one worker is written by another (a dead worker's trial taken over, the
heartbeat of a claimed trial): Optuna's public API writes a trial through the `Trial` that
`ask()` returned, and the only way to get one for an existing trial is its storage id, which
Optuna keeps private. pyproject.toml caps optuna at the newest minor version the contract test
passed on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna


def trial_id(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (not its number within the study)."""
    return trial._trial_id


def trial_by_id(study: optuna.Study, trial_id: int) -> optuna.trial.Trial:
    """A writable Trial for an existing trial of `study`."""
    import optuna

    return optuna.trial.Trial(study, trial_id)
