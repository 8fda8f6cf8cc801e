"""Synthetic fair comparisons with a known truth, for calibration and power (no training).

Each test example i has a difficulty b_i ~ N(0, difficulty) shared by all models, and an
optimizer-specific part g_oi ~ N(0, interaction) (one optimizer is better on some examples);
each replicate run (search r, seed s) of optimizer o gets an ability a = search_r + seed_s with
search_r ~ N(0, sd_search) (another search selects another setting) and seed_s ~ N(0, sd_seed).
A run gets example i right with probability sigmoid(logit_o + a + b_i + g_oi). The true accuracy
of optimizer o is the expectation of that over searches, seeds and examples (`true_accuracy`).
The runs are `Run` objects as `load_protocol` returns them, so the real `analyse` reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from pipeline.sweeps.protocol.runs import Protocol, Run


@dataclass(frozen=True)
class World:
    logit: float = 2.0  # ~0.88 accuracy with the spreads below, as Fashion-MNIST's MLP
    difficulty: float = 1.5
    interaction: float = 0.5
    sd_search: float = 0.04
    sd_seed: float = 0.04
    n_test: int = 500

    def true_accuracy(self, shift: float = 0.0) -> float:
        """E[sigmoid(logit + shift + a + b + g)]: one normal of the summed variance, quadrature."""
        sd = math.sqrt(
            self.difficulty**2 + self.interaction**2 + self.sd_search**2 + self.sd_seed**2
        )
        x, w = np.polynomial.hermite_e.hermegauss(80)
        return float(np.sum(w * special.expit(self.logit + shift + sd * x)) / np.sum(w))

    def shift_for(self, delta: float) -> float:
        """The logit shift that raises the true accuracy by `delta`."""
        base = self.true_accuracy()
        return optimize.brentq(lambda s: self.true_accuracy(s) - base - delta, -3, 3)


def protocol(
    world: World,
    shifts: dict[str, float],
    searches: int,
    seeds: int,
    rng: np.random.Generator,
    trials: int = 2,
    failed: float = 0.0,
) -> Protocol:
    """One comparison: per optimizer `searches` x (`trials` tuning runs + `seeds` replicates);
    `failed`: the chance that a replicate diverged (it then counts as chance accuracy)."""
    b = rng.normal(0, world.difficulty, world.n_test)
    runs = []
    for name, shift in shifts.items():
        g = rng.normal(0, world.interaction, world.n_test)
        for r in range(searches):
            search_effect = rng.normal(0, world.sd_search)
            for t in range(trials):  # trial 0 has the best validation accuracy: selected
                runs.append(_run(f"{name}-{r}-t{t}", "tune", name, r, 0, t, 0.9 - 0.01 * t))
            for s in range(seeds):
                seed = 1 + s + 1000 * r  # each search its own seeds, as the sweeper does
                logit = world.logit + shift + search_effect + rng.normal(0, world.sd_seed) + b + g
                correct = rng.random(world.n_test) < special.expit(logit)
                run = _run(f"{name}-{r}-s{seed}", "replicate", name, r, seed, None, 0.9)
                if rng.random() < failed:
                    run.status = "DIVERGED"
                else:
                    run.correct, run.test_acc = correct, float(correct.mean())
                runs.append(run)
    return Protocol(
        parent_id="sim",
        name="sim",
        protocol_id="sim",
        optimizers=list(shifts),
        budget=trials,
        tuning_seeds="0",
        replicate_seeds=",".join(str(1 + s) for s in range(seeds)),
        target=0.85,
        objective="val/acc",
        runs=runs,
        searches=searches,
    )


def _run(name, stage, optimizer, search, seed, trial, val) -> Run:
    lr = 10.0 ** -(trial or 0)
    return Run(
        run_id=name,
        name=name,
        stage=stage,
        optimizer=optimizer,
        trial=trial,
        seed=seed,
        status="FINISHED",
        hyperparameters={"optimizer.lr": str(lr if stage == "tune" else 1.0)},
        test_acc=math.nan,
        curves={"val/acc": [(100, val)], "epoch_time_s": [(100, 1.0)]},
        search=search,
    )
