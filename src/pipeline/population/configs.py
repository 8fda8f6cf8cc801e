"""`hydra/launcher=population`'s config, registered in Hydra's ConfigStore (a dataclass only:
Hydra imports it for every command)."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.pipeline_population.PopulationLauncher"
    # The most members one population holds; a larger group of alike jobs trains as several
    # populations of even size. On a CPU ~32 members' weights and state stay in the caches
    # (docs/performance.md#populations: 128 run at half the rate); on a GPU raise it (memory).
    max_members: int = 32
    # Torch threads a population trains with; null: one per core. Its ops are K times one run's,
    # large enough to keep every core busy (a single run is fastest on one thread).
    torch_threads: int | None = None


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf)
