"""Every use of Hydra's private API, in one place (tests/test_hydra_contract.py holds each).

Checking a grid sweep's jobs before any runs needs the jobs as Hydra's basic sweeper would cut
them (its `split_arguments` lives in `hydra._internal`), and a failed job's exception is kept in
`JobReturn._return_value` (the public `return_value` re-raises it). pyproject.toml caps
hydra-core at the minor version the contract test passed on.
"""

from __future__ import annotations

from typing import Any


def grid_jobs(overrides: list[Any], max_batch_size: int | None = None) -> list[list[list[str]]]:
    """The jobs of a grid sweep over parsed `overrides`, in batches, as Hydra's BasicSweeper
    makes them: each job a list of `key=value` strings."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper.split_arguments(overrides, max_batch_size)


def job_error(job_return: Any) -> BaseException | None:
    """The exception a failed Hydra job raised (None for a job that returned)."""
    value = getattr(job_return, "_return_value", None)
    return value if isinstance(value, BaseException) else None
