"""`hydra/launcher=population`'s config, registered in Hydra's ConfigStore (a dataclass only:
Hydra imports it for every command)."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.pipeline_population.PopulationLauncher"
    # The most members one population holds (memory: each member is a model, its optimizer
    # state and its minibatch); a larger group of alike jobs trains as several populations.
    max_members: int = 128
    # Torch threads a population trains with; null: one per core. Its ops are K times one run's,
    # large enough to keep every core busy (a single run is fastest on one thread).
    torch_threads: int | None = None


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf)
