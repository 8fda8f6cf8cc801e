"""`hydra/launcher=population`: jobs of a multirun batch that differ only in optimizer
hyperparameters and seed train as one population; every other job runs alone, as with Hydra's
basic launcher, and one line says why.

Each job is still a Hydra job: `run_job` makes its folder, its `.hydra/` files and calls the
sweep's callbacks; for a population member its task only takes the job's config, overrides,
tags and parent run (so the job's own `${hydra:...}` values resolve), then all members train
together and each job's return value becomes its member's val/acc (0.0 for a diverged member,
as for a diverged job: pipeline.cli.train).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.exit_codes import ExitCode
from pipeline.population.run import Member, batch_problem, shared_part, train_population
from pipeline.sweeps.workers import cpu_cores

log = logging.getLogger(__name__)


class PopulationLauncher:
    def __init__(self, max_members: int = 32, torch_threads: int | None = None) -> None:
        if max_members < 1:
            raise ValueError(f"hydra.launcher.max_members={max_members} must be at least 1")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"hydra.launcher.torch_threads={torch_threads}: give 1 or more")
        self.max_members = max_members
        self.threads = torch_threads or cpu_cores()
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def _job_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    def _run(self, cfg: DictConfig, task: TaskFunction) -> JobReturn:
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=task,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def groups(self, cfgs: dict[int, DictConfig]) -> tuple[list[list[int]], dict[int, str]]:
        """Jobs that can train together (at most max_members each), and why the others cannot."""
        alone: dict[int, str] = {}
        alike: dict[str, list[int]] = {}
        for idx, cfg in cfgs.items():
            problem = batch_problem([cfg])
            if problem is not None:
                alone[idx] = problem
                continue
            key = json.dumps(shared_part(cfg), sort_keys=True, default=str)
            alike.setdefault(key, []).append(idx)
        groups = []
        for members in alike.values():
            if len(members) == 1:
                alone[members[0]] = "no other job differs from it only in optimizer.* and seed"
                continue
            count = -(-len(members) // self.max_members)  # chunks of even size, none over
            size, extra = divmod(len(members), count)
            bounds = [c * size + min(c, extra) for c in range(count + 1)]
            for start, end in zip(bounds, bounds[1:], strict=False):
                chunk = members[start:end]
                problem = batch_problem([cfgs[i] for i in chunk]) if len(chunk) > 1 else None
                if len(chunk) == 1:
                    alone[chunk[0]] = "the last of its group after max_members"
                elif problem is not None:
                    alone.update(dict.fromkeys(chunk, problem))
                else:
                    groups.append(chunk)
        return groups, alone

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        overrides = {initial_job_idx + i: list(o) for i, o in enumerate(job_overrides)}
        cfgs = {idx: self._job_config(o, idx) for idx, o in overrides.items()}
        groups, alone = self.groups(cfgs)
        log.info(
            f"Launching {len(overrides)} jobs: {len(groups)} population(s), {len(alone)} alone"
        )
        returns: dict[int, JobReturn] = {}
        common = (
            set.intersection(*(set(o) for o in overrides.values())) if len(alone) > 1 else set()
        )
        for idx, why in alone.items():  # what sets the job apart, without the sweep's own tags
            own = [
                o
                for o in filter_overrides(overrides[idx])
                if o not in common and not o.startswith("++tracking.tags.")
            ]
            log.info(f"\t#{idx} : {' '.join(own)} (alone: {why})")
        for group in groups:
            returns.update(self._population(group, cfgs, overrides))
        for idx in sorted(alone):
            returns[idx] = self._run(cfgs[idx], self.task_function)
        return [returns[idx] for idx in sorted(returns)]

    def _population(self, group, cfgs, overrides) -> dict[int, JobReturn]:
        from pipeline.config.job import hydra_overrides
        from pipeline.population import resume
        from pipeline.sweeps import jobs
        from pipeline.sweeps.common import job_tags, parent_run_id

        members: dict[int, Member] = {}  # every job's member, as it would train now
        earlier: dict[int, str] = {}  # job -> its earlier run, a population member's
        resumes: dict[int, Path] = {}  # job -> the population checkpoint its run goes on from
        returns: dict[int, JobReturn] = {}
        ran: set[int] = set()  # jobs that ended (or went on alone) through their own task
        log.info(f"\tpopulation of {len(group)}: {', '.join(f'#{i}' for i in group)}")
        for idx in group:

            def take(cfg: DictConfig, idx: int = idx):
                resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
                members[idx] = Member(resolved, hydra_overrides(), job_tags(), parent_run_id())
                run = resume.earlier_member(cfg)
                path = resume.resumable(run) if run is not None else None
                if run is not None:
                    earlier[idx] = run.info.run_id
                if path is not None:  # the same sweep again: the population goes on
                    status = run.info.status
                    print(
                        f"Continuing the job's interrupted MLflow run {run.info.run_id} "
                        f"({status}) from its population's checkpoint",
                        flush=True,
                    )
                    resumes[idx] = path
                    return None
                done = jobs.before_job(cfg)  # a resumed sweep: the job's earlier run decides
                if done is not None or cfg.get("resume"):
                    ran.add(idx)
                    return self.task_function(cfg)
                return None

            returns[idx] = self._run(cfgs[idx], take)
        pending = [i for i in group if returns[i].status == JobStatus.COMPLETED and i not in ran]
        fresh = [i for i in pending if i not in resumes]
        if fresh:
            self._train(fresh, [members[i] for i in fresh], returns, None)
        for path in dict.fromkeys(resumes[i] for i in pending if i in resumes):
            order = self._resumed_order(path, earlier)
            self._train(order, [members[i] for i in order], returns, path, set(pending))
        return returns

    @staticmethod
    def _resumed_order(path: Path, earlier: dict[int, str]) -> list[int]:
        """The jobs of the checkpoint's members, in member order; every one must be here."""
        from pipeline.errors import ConfigError
        from pipeline.population import resume

        try:
            run_ids = resume.read(path)[resume.POPULATION_KEY]["run_ids"]
            job_of = {run_id: idx for idx, run_id in earlier.items()}
            missing = [run_id for run_id in run_ids if run_id not in job_of]
            if missing:
                raise ConfigError(
                    f"population checkpoint {path} holds MLflow run(s) {', '.join(missing)} "
                    "that no job of this batch ran before: resume with the sweep's own command "
                    "(the same overrides and hydra.launcher.max_members)"
                )
        except ConfigError as error:  # nothing was touched: the runs stay as they are
            print(f"error: {error}", file=sys.stderr)
            sys.exit(ExitCode.BAD_INPUT)
        return [job_of[run_id] for run_id in run_ids]

    def _train(self, order, members, returns, path: Path | None, pending=None) -> None:
        """Train one population; each pending job's return value is its member's result."""
        from pipeline.errors import ConfigError
        from pipeline.training.signals import Stopped

        shown = ", ".join(f"#{i}" for i in order)
        try:
            workdir = Path(members[0].cfg.paths.output_dir) / "population"
            results = train_population(
                members, workdir=workdir, resume_from=path, threads=self.threads
            )
        except Stopped as stop:  # Ctrl-C / SIGTERM: the sweep stops, as a single run's would
            print(
                f"interrupted by {signal.Signals(stop.signum).name}: the population's MLflow "
                "runs are marked KILLED; the same command resumes them from its checkpoint",
                file=sys.stderr,
            )
            sys.exit(ExitCode.for_signal(stop.signum))
        except ConfigError as error:
            if path is None:
                raise
            print(f"error: {error}", file=sys.stderr)  # a checkpoint refused: nothing changed
            sys.exit(ExitCode.BAD_INPUT)
        except Exception as error:
            print(f"error: population of jobs {shown} failed: {error}", file=sys.stderr)
            for idx in order:
                if pending is None or idx in pending:
                    returns[idx].status, returns[idx].return_value = JobStatus.FAILED, error
            return
        for idx, result in zip(order, results, strict=True):
            if pending is not None and idx not in pending:
                continue  # ended before the interruption (diverged): its job said so
            if result.status == "FINISHED":
                test_acc = result.metrics.get("test/acc", float("nan"))
                print(f"MLflow run {result.run_id}: test/acc {test_acc:.4f}")
                returns[idx].return_value = result.metrics.get("val/acc", float("nan"))
            else:  # diverged: a result in a sweep, the worst accuracy (pipeline.cli.train)
                print(f"diverged: MLflow run {result.run_id} marked FAILED", file=sys.stderr)
                returns[idx].return_value = 0.0
