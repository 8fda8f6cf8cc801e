"""The project's Hydra sweepers, where Hydra looks for plugins (the `hydra_plugins` namespace):
`hydra/sweeper=optuna` (hparams_search) and `hydra/sweeper=protocol` (experiment=fair_comparison).

Hydra imports this package for every command and instantiates only plugins defined here; so,
as hydra-optuna-sweeper does, these classes are thin and load the code (pipeline.sweeps) when a
sweep starts. Their configs are registered by pipeline.sweeps.search.configs.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper

import pipeline.sweeps.search.configs  # noqa: F401  (ConfigStore entries; dataclasses only)


class _Lazy(Sweeper):
    impl = ""  # module:class of the real sweeper

    def __init__(self, **settings: Any) -> None:
        import importlib

        module, _, name = self.impl.partition(":")
        self.sweeper = getattr(importlib.import_module(module), name)(**settings)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)


class OptunaSweeper(_Lazy):
    impl = "pipeline.sweeps.search.sweeper:OptunaSweeper"


class ProtocolSweeper(_Lazy):
    impl = "pipeline.sweeps.protocol.sweeper:ProtocolSweeper"
