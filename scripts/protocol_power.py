"""Power of the fair comparison's verdicts at a budget, by simulation through the real analyse().

    python scripts/protocol_power.py --searches 3 --seeds 8 --deltas 0.003 0.005 0.01

Six optimizers; one is better than the five others by delta (true test accuracy); the world
(pipeline.sweeps.protocol.simulate) is set to Fashion-MNIST's MLP: ~0.88 accuracy, 10,000 test
examples, seed sd and search sd of the test accuracy as given (--sd-seed, --sd-search, in
accuracy). Prints, per delta: how often the better one is detectably better than one given
other optimizer (power per pair) and how often it is named the winner (better than all five).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from pipeline.sweeps.protocol import inference, simulate
from pipeline.sweeps.protocol.analysis import analyse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.0, 0.003, 0.005, 0.01])
    parser.add_argument("--sd-seed", type=float, default=0.003)
    parser.add_argument("--sd-search", type=float, default=0.003)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    inference.RESAMPLES = 10  # P(A > B) takes no part in the verdicts
    base = simulate.World(logit=2.8, n_test=args.n_test, sd_search=0.0, sd_seed=0.0)
    slope = (base.true_accuracy(0.01) - base.true_accuracy(-0.01)) / 0.02  # d accuracy / d logit
    world = simulate.World(
        logit=2.8,
        n_test=args.n_test,
        sd_search=args.sd_search / slope if args.searches > 1 else 0.0,
        sd_seed=args.sd_seed / slope,
    )
    rng = np.random.default_rng(args.seed)
    print(f"searches={args.searches} seeds={args.seeds} n_test={args.n_test} "
          f"sd_seed={args.sd_seed} sd_search={args.sd_search} reps={args.reps} "
          f"true acc {world.true_accuracy():.4f}")  # fmt: skip
    for delta in args.deltas:
        shifts = {"best": world.shift_for(delta), **{f"o{i}": 0.0 for i in range(5)}}
        pair = winner = 0
        detectable, se, df = [], [], []
        for _ in range(args.reps):
            a = analyse(simulate.protocol(world, shifts, args.searches, args.seeds, rng))
            beats = {c.b if c.a == "best" else c.a for c in a.pairs if _best_beats(c)}
            pair += "o0" in beats
            winner += len(beats) == 5
            detectable += [c.detectable for c in a.pairs]
            [c] = [c for c in a.pairs if {c.a, c.b} == {"best", "o0"}]
            se.append(c.test.se)
            df.append(c.test.df)
        print(f"delta={delta:.3f}: power per pair {pair / args.reps:.2f} "
              f"(normal approx. at Holm's first step: {_power(delta, se, df):.2f}), named winner "
              f"{winner / args.reps:.2f}, detectable at 80% ~{np.nanmedian(detectable):.4f}",
              flush=True)  # fmt: skip


def _power(delta: float, se: list[float], df: list[float], family: int = 15) -> float:
    """P(|t| > t_crit at ALPHA/family) for a noncentral t with the median se and df seen."""
    s, d = float(np.nanmedian(se)), float(np.nanmedian(df))
    crit = stats.t.ppf(1 - inference.ALPHA / family / 2, d)
    return float(stats.nct.sf(crit, d, delta / s) + stats.nct.cdf(-crit, d, delta / s))


def _best_beats(c) -> bool:
    return (c.a == "best" and c.verdict == "better") or (c.b == "best" and c.verdict == "worse")


if __name__ == "__main__":
    main()
