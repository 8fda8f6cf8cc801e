"""experiment=fair_comparison: the same tuning budget for every optimizer, then replicates.

For each optimizer, three stages, each one Optuna study named after the protocol id
(sweeps.identity) so that the same command finds them again:

  default    `<id>-<opt>-default`   the preset's own hyperparameters, one run per replicate seed
  tune       `<id>-<opt>`           `trials` trials over conf/search_space/<opt>.yaml; a trial
                                    trains once per tuning seed; its value is the mean best
                                    val/acc (failed or diverged: FAIL, counted all the same);
                                    tuning runs never evaluate the test split, and record
                                    no model or curves figure (`tuning_overrides`)
  replicate  `<id>-<opt>-replicate` the selected trial (Optuna's best: validation only), one run
                                    per replicate seed; starts once the optimizer's tuning ended

With `searches` = R > 1 the tune and replicate stages run R times per optimizer, independent
searches (studies `<id>-<opt>`, `<id>-<opt>-search1`, ...; tag protocol.search): search r draws
with its own sampler seed (+ SEARCH_STRIDE·r) and trains with its own seeds (tuning and replicate
seeds + SEED_STRIDE·r), so "the tuned optimizer" is a distribution over searches and seeds.

Seed k gives every optimizer the same initial weights and data order (the seed fixes both), so
default and replicate runs are paired across optimizers. Every run is a child of the one parent
run, tagged protocol.{id,stage,optimizer,seed} (and protocol.trial when tuning). At the end the
report is written (pipeline.sweeps.protocol.report).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.sweeps.identity import sweep_key
from pipeline.sweeps.jobs import OBJECTIVE
from pipeline.sweeps.search import space as spaces
from pipeline.sweeps.search import study as tickets
from pipeline.sweeps.search.runner import Stage, TicketSweeper, tag_overrides

log = logging.getLogger(__name__)

OWN_KEYS = ("optimizer", "seed")  # set per job: not taken from the command line
# The validation target per data set when hydra.sweeper.target_val_acc is null: one that most
# tuned optimizers reach within the default 5 epochs, so that the time to reach it tells them apart.
TARGETS = {"mnist": 0.9, "fashion_mnist": 0.85}
SEED_STRIDE, SEARCH_STRIDE = 1000, 100_000  # search r's seeds and sampler seeds are offset
REPORT_FAILED = "report_failed.txt"  # in the sweep folder while the last report attempt failed


def target_for(target_val_acc: float | None, data_name: str) -> float:
    """The protocol's validation target: as set, else the data set's own (TARGETS)."""
    return float(target_val_acc) if target_val_acc is not None else TARGETS.get(data_name, 0.9)


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


class ProtocolStage(Stage):
    def __init__(self, sweeper: ProtocolSweeper, optimizer: str, stage: str, study, size: int):
        self.sweeper, self.optimizer, self.stage, self.study = sweeper, optimizer, stage, study
        self.name, self._size = f"{stage} {optimizer}", size

    def size(self) -> int:
        return self._size

    def job(self, seed: int, params: list[str], **tags: Any) -> list[str]:
        tags = {"protocol.stage": self.stage, "protocol.optimizer": self.optimizer, **tags}
        tags |= {"protocol.id": self.sweeper.protocol_id, "protocol.seed": seed}
        return [
            *self.sweeper.base,
            f"optimizer={self.optimizer}",
            f"seed={seed}",
            *params,
            *tag_overrides(tags),
        ]

    def jobs(self, ticket: tickets.Ticket) -> list[list[str]]:  # default
        return [self.job(self.sweeper.replicate_seeds[ticket.number], [])]


class Tune(ProtocolStage):
    def __init__(self, sweeper, optimizer, study, size, space, search: int = 0):
        super().__init__(sweeper, optimizer, "tune", study, size)
        self.space, self.search = space, search
        self.name += f" (search {search})" if search else ""
        self.sampler_cfg = dict(sweeper.sampler_cfg)
        if search and self.sampler_cfg.get("seed") is not None:
            self.sampler_cfg["seed"] = int(self.sampler_cfg["seed"]) + SEARCH_STRIDE * search

    def suggest(self, trial) -> None:
        spaces.suggest_seeded(self.study, trial, self.space, self.sampler_cfg)

    def ready(self) -> bool:
        """A trial whose draw needs earlier results waits for them: the search is the same
        sequential one whatever the batch size (and a population can hold a search's first
        `independent_draws` trials at once)."""
        trials = tickets.counted(self.study, self._size)
        if len(trials) < spaces.independent_draws(self.sampler_cfg, self._size):
            return True
        return not tickets.busy(trials)

    def jobs(self, ticket: tickets.Ticket) -> list[list[str]]:
        params = [*spaces.overrides(ticket.params, self.space), *self.sweeper.tuning_overrides]
        if not self.sweeper.test_during_tuning:
            params.append("trainer.limit_test_batches=0")  # the test split waits for the end
        tags = {"protocol.trial": ticket.number, **self.search_tag()}
        return [
            self.job(s + SEED_STRIDE * self.search, params, **tags)
            for s in self.sweeper.tuning_seeds
        ]

    def search_tag(self) -> dict[str, int]:
        """protocol.search on searches after the first (absent: 0, as before searches)."""
        return {"protocol.search": self.search} if self.sweeper.searches > 1 else {}


class Replicate(ProtocolStage):
    def __init__(self, sweeper, optimizer, study, size, tune: Tune):
        super().__init__(sweeper, optimizer, "replicate", study, size)
        self.tune = tune
        self.name += f" (search {tune.search})" if tune.search else ""

    def ready(self) -> bool:
        return tickets.finished(self.tune.study, self.tune.size())

    def best(self):
        done = [
            t for t in tickets.counted(self.tune.study, self.tune.size()) if t.value is not None
        ]
        return max(done, key=lambda t: (t.value, -t.number)) if done else None

    def size(self) -> int:
        return self._size if self.ready() and self.best() is not None else 0

    def jobs(self, ticket: tickets.Ticket) -> list[list[str]]:
        best = self.best()
        params = spaces.overrides(best.params, self.tune.space)
        seed = self.sweeper.replicate_seeds[ticket.number] + SEED_STRIDE * self.tune.search
        tags = {"protocol.selected_trial": best.number, **self.tune.search_tag()}
        return [self.job(seed, params, **tags)]


class ProtocolSweeper(TicketSweeper):
    def __init__(
        self,
        optimizers,
        trials,
        tuning_seeds,
        replicate_seeds,
        search_space,
        sampler,
        test_during_tuning=False,
        tuning_overrides=(),
        target_val_acc=None,
        storage=None,
        n_jobs=1,
        poll_s=5.0,
        params=None,
        searches=1,
    ) -> None:
        super().__init__(n_jobs, poll_s)
        self.optimizers, self.trials = [str(o) for o in optimizers], int(trials)
        self.searches = int(searches)
        self.tuning_seeds = [int(s) for s in tuning_seeds]
        self.replicate_seeds = [int(s) for s in replicate_seeds]
        self.search_space, self.sampler = search_space, sampler
        self.test_during_tuning, self.target_val_acc = test_during_tuning, target_val_acc
        self.tuning_overrides = [str(o) for o in tuning_overrides]

    def sweep(self, arguments: list[str]) -> None:
        client, parent_id, url = self.begin()
        # Hydra instantiates the sampler it passes; each trial gets one of its own (suggest)
        self.sampler_cfg = OmegaConf.to_container(self.config.hydra.sweeper.sampler)
        self.protocol_id = sweep_key(self.config)
        self.target_val_acc = target_for(self.target_val_acc, str(self.config.data.name))
        self.base = [a for a in arguments if _key(a) not in OWN_KEYS]
        with tickets.storage_lock(url):  # workers starting at once: one logs, the rest find them
            self.record(client, parent_id)
        stages: list[Stage] = []
        tunes = []
        for opt in self.optimizers:
            name = f"{self.protocol_id}-{opt}"
            n = len(self.replicate_seeds)
            stages.append(
                ProtocolStage(self, opt, "default", tickets.open_study(url, name + "-default"), n)
            )  # noqa: E501
            space = spaces.distributions(dict(self.search_space[opt]), f"search_space.{opt}")
            for r in range(self.searches):
                study = tickets.open_study(url, name + (f"-search{r}" if r else ""))
                tunes.append(Tune(self, opt, study, self.trials, space, r))
        stages += tunes
        for tune in tunes:
            study = tickets.open_study(url, f"{tune.study.study_name}-replicate")
            stages.append(Replicate(self, tune.optimizer, study, len(self.replicate_seeds), tune))
        self.run(stages)
        # Workers ending at once: one at a time tags the parent and takes a report folder
        # (PostgreSQL refuses two inserts of one tag; report/ would be claimed twice).
        with tickets.storage_lock(url):
            self.finish(client, parent_id, tunes, stages)

    def record(self, client, parent_id: str) -> None:
        """The protocol's settings on the parent run (the same values on every attempt)."""
        from mlflow.entities import Param

        params = {
            "protocol.optimizers": ",".join(self.optimizers),
            "protocol.trials": str(self.trials),
            "protocol.searches": str(self.searches),
            "protocol.tuning_seeds": ",".join(map(str, self.tuning_seeds)),
            "protocol.replicate_seeds": ",".join(map(str, self.replicate_seeds)),
            "protocol.target_val_acc": str(self.target_val_acc),
            "protocol.objective": OBJECTIVE,
            "protocol.test_during_tuning": str(self.test_during_tuning).lower(),
            "protocol.tuning_overrides": " ".join(self.tuning_overrides),
            "protocol.sampler": json.dumps(self.sampler_cfg, sort_keys=True),
            **{
                f"protocol.search_space.{o}": json.dumps(
                    OmegaConf.to_container(self.search_space[o]), sort_keys=True
                )
                for o in self.optimizers
            },
        }
        old = client.get_run(parent_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in old]
        if new:
            client.log_batch(parent_id, params=new)
        client.set_tag(parent_id, "protocol.id", self.protocol_id)

    def finish(self, client, parent_id: str, tunes: list[Tune], stages: list[Stage]) -> None:
        for tune, replicate in zip(tunes, stages[-len(tunes) :], strict=True):
            best = replicate.best()
            text = (
                "none (every trial failed)"
                if best is None
                else (
                    f"trial {best.number}: {' '.join(spaces.overrides(best.params, tune.space))}"
                    f" (val/acc {best.value:.4f})"
                )
            )
            key = f"protocol.selected.{tune.optimizer}" + (
                f".search{tune.search}" if tune.search else ""
            )
            client.set_tag(parent_id, key, text)
            log.info("Protocol: %s selected %s", tune.optimizer, text)
        folder = Path(self.config.hydra.sweep.dir)  # the report goes to report/, report-2/, ...
        from pipeline.sweeps.protocol.report import write_protocol_report

        failed = folder / REPORT_FAILED  # read by the sweep callback: no "finished ... ok"
        failed.unlink(missing_ok=True)
        try:
            write_protocol_report(client, parent_id, folder)  # prints where it went
        except Exception as error:  # the runs are recorded; the report can be made again
            log.exception("Protocol report failed (parent MLflow run %s)", parent_id)
            failed.write_text(f"{type(error).__name__}: {error}")


def check(config: DictConfig) -> None:
    """Bad protocol settings: ConfigError before anything is created."""
    from pathlib import Path as _Path

    from pipeline import CONFIG_DIR

    sweeper = config.hydra.sweeper
    if int(sweeper.trials) < 1:
        raise ConfigError(f"hydra.sweeper.trials={sweeper.trials}: give at least 1 trial")
    searches = int(sweeper.get("searches", 1))
    if searches < 1:
        raise ConfigError(f"hydra.sweeper.searches={searches}: give at least 1 search")
    seeds = [*sweeper.tuning_seeds, *sweeper.replicate_seeds]
    if searches > 1 and not all(0 <= int(s) < SEED_STRIDE for s in seeds):
        raise ConfigError(
            f"hydra.sweeper.searches={searches}: seeds in [0, {SEED_STRIDE}) (search r adds "
            f"{SEED_STRIDE}·r to them); got {seeds}"
        )
    target = sweeper.get("target_val_acc")
    if target is not None and not 0 < float(target) <= 1:
        raise ConfigError(
            f"hydra.sweeper.target_val_acc={target}: an accuracy in (0, 1], or null for the "
            "data set's own"
        )
    if not sweeper.optimizers or not sweeper.replicate_seeds or not sweeper.tuning_seeds:
        raise ConfigError("hydra.sweeper.optimizers, tuning_seeds and replicate_seeds: none empty")
    shared = set(sweeper.tuning_seeds) & set(sweeper.replicate_seeds)
    if shared or len(set(sweeper.replicate_seeds)) < len(sweeper.replicate_seeds):
        raise ConfigError(
            f"hydra.sweeper.replicate_seeds={list(sweeper.replicate_seeds)}: distinct seeds, none "
            f"of them a tuning seed ({list(sweeper.tuning_seeds)})"
        )
    presets = _Path(CONFIG_DIR) / "optimizer"
    found = _optimizer_presets(config, presets)
    for opt in sweeper.optimizers:
        if opt not in found:
            raise ConfigError(
                f"hydra.sweeper.optimizers: no optimizer preset {opt!r} in {presets} or in "
                "hydra.searchpath (a config dir of your own: optimizer/<name>.yaml)"
            )
        if opt not in sweeper.search_space:
            raise ConfigError(
                f"hydra.sweeper.search_space has no {opt}: add conf/search_space/{opt}.yaml, or "
                f"+search_space@hydra.sweeper.search_space={opt} with search_space/{opt}.yaml "
                "in your hydra.searchpath"
            )
        spaces.distributions(dict(sweeper.search_space[opt]), f"hydra.sweeper.search_space.{opt}")
    tickets.storage_url(config)


def _optimizer_presets(config: DictConfig, presets) -> set[str]:
    """The optimizer presets Hydra can find: conf/optimizer/ and those of hydra.searchpath (the
    loader reads it from the primary config and the command line's hydra overrides)."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return {path.stem for path in presets.glob("*.yaml")}
    loader = GlobalHydra.instance().config_loader()
    hydra = [str(o) for o in config.hydra.overrides.hydra]
    name = config.hydra.job.config_name
    return set(loader.get_group_options("optimizer", config_name=name, overrides=hydra))
