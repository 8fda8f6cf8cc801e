"""`hydra/launcher=population`: a multirun's jobs that differ only in optimizer hyperparameters
and seed train as populations (pipeline.population), the others one run each.

Thin, like pipeline_sweepers: Hydra imports this package for every command; the launcher's code
(and Lightning) loads when a sweep launches.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.launcher import Launcher

import pipeline.population.configs  # noqa: F401  (the ConfigStore entry; a dataclass only)


class PopulationLauncher(Launcher):
    def __init__(self, **settings: Any) -> None:
        from pipeline.population.launcher import PopulationLauncher as Impl

        self.launcher = Impl(**settings)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        return self.launcher.launch(job_overrides, initial_job_idx)
