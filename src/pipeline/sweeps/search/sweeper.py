"""`hydra/sweeper=optuna` (hparams_search=optuna_lr): one persistent Optuna study on the current
Optuna's ask/tell API, for the command's optimizer.

The search space is `hydra.sweeper.params` plus any sweep on the command line
(`optimizer.momentum=interval(0.5,0.99)`), in Hydra's sweep syntax (sweeps.space). The study
lives in Optuna's database (sweeps.study) under `<sweep key>-<optimizer>` (or
`hydra.sweeper.study_name`): the same command continues it after an interruption, and several
commands at once share it. `n_trials` is the budget, each trial counted once whatever its end.
The objective is the best validation accuracy over the run's epochs (sweeps.jobs.objective).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.sweeps.identity import sweep_key
from pipeline.sweeps.search import space as spaces
from pipeline.sweeps.search import study as tickets
from pipeline.sweeps.search.runner import Stage, TicketSweeper, tag_overrides


def split(params: dict[str, str], arguments: list[str]) -> tuple[dict[str, object], list[str]]:
    """(the search space, the command line's fixed overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(arguments)
    swept = {  # the text after "=", as written: a sweep has no string form of its own
        o.get_key_element(): a.partition("=")[2]
        for a, o in zip(arguments, parsed, strict=True)
        if o.is_sweep_override()
    }
    fixed = [a for a, o in zip(arguments, parsed, strict=True) if not o.is_sweep_override()]
    keys = {o.get_key_element() for o in parsed}
    space = {k: v for k, v in params.items() if k not in keys} | swept
    return spaces.distributions(space, "hydra.sweeper.params"), fixed


class Search(Stage):
    def __init__(self, sweeper: OptunaSweeper, study, space, base: list[str]) -> None:
        self.sweeper, self.study, self.space, self.base = sweeper, study, space, base
        self.name = f"search {study.study_name}"

    def size(self) -> int:
        return self.sweeper.n_trials

    def suggest(self, trial) -> None:
        spaces.suggest_seeded(self.study, trial, self.space, self.sweeper.sampler_cfg)

    def jobs(self, ticket: tickets.Ticket) -> list[list[str]]:
        tags = {"optuna.study": self.study.study_name, "optuna.trial": ticket.number}
        return [[*self.base, *spaces.overrides(ticket.params, self.space), *tag_overrides(tags)]]


class OptunaSweeper(TicketSweeper):
    def __init__(
        self, params, n_trials, sampler, storage=None, study_name=None, n_jobs=1, poll_s=5.0
    ) -> None:
        super().__init__(n_jobs, poll_s)
        self.params, self.n_trials, self.sampler = dict(params or {}), int(n_trials), sampler
        self.study_name = study_name

    def sweep(self, arguments: list[str]) -> None:
        client, parent_id, url = self.begin()
        # Hydra instantiates the sampler it passes; each trial gets one of its own (suggest)
        self.sampler_cfg = OmegaConf.to_container(self.config.hydra.sweeper.sampler)
        space, base = split(self.params, arguments)
        name = self.study_name or f"{sweep_key(self.config)}-{self.config.optimizer.name}"
        search = Search(self, tickets.open_study(url, name), space, base)
        client.set_tag(parent_id, "optuna.study", name)
        self.run([search])
        done = [t for t in tickets.counted(search.study, self.n_trials) if t.value is not None]
        if done:  # sweeps.callback puts these on the parent run
            best = max(done, key=lambda t: (t.value, -t.number))
            result = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
            OmegaConf.save(OmegaConf.create(result), path)


def check(config: DictConfig) -> None:
    if int(config.hydra.sweeper.n_trials) < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={config.hydra.sweeper.n_trials}: at least 1")
    split(dict(config.hydra.sweeper.params or {}), [str(o) for o in config.hydra.overrides.task])
    tickets.storage_url(config)
