"""Calibration of the fair comparison's verdicts under the null, through the real analyse().

    python scripts/protocol_calibration.py --reps 2000 --optimizers 3

Every optimizer is the same (simulate.World: shared example difficulty, optimizer-specific
per-example effects, search and seed effects; --sd-search and --sd-seed in logits). Prints per
(searches, seeds) cell the family-wise false-positive rate of the verdicts (Holm over all pairs;
any 'better' or 'worse' is false) with its Monte Carlo standard error, the rate of a named
winner, and the headline interval's coverage of the true accuracy. One search: the search's own
noise is not simulated (the intervals hold the selection fixed, as the report says).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from pipeline.sweeps.protocol import inference, simulate, stats
from pipeline.sweeps.protocol.analysis import analyse


def cell(args, searches: int, seeds: int, rng) -> tuple[float, float, float]:
    world = simulate.World(
        n_test=args.n_test,
        sd_search=args.sd_search if searches > 1 else 0.0,
        sd_seed=args.sd_seed,
        interaction=args.interaction,
    )
    truth, null = world.true_accuracy(), {f"o{i}": 0.0 for i in range(args.optimizers)}
    false = to_best = winner = covered = intervals = 0
    for _ in range(args.reps):
        a = analyse(simulate.protocol(world, null, searches, seeds, rng))
        false += any(c.verdict in ("better", "worse") for c in a.pairs)
        # the alternative rejected in the docs: Holm over the k − 1 pairs of the best mean
        to_best += bool(a.to_best) and min(stats.holm([c.test.p for c in a.to_best])) < 0.05
        winner += bool(a.order) and a.ranks[a.order[0]].worst == 1
        covered += sum(r.tuned.low <= truth <= r.tuned.high for r in a.rows.values())
        intervals += len(a.rows)
    return false / args.reps, to_best / args.reps, winner / args.reps, covered / intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--optimizers", type=int, default=3)
    parser.add_argument("--sd-search", type=float, default=0.04)
    parser.add_argument("--sd-seed", type=float, default=0.04)
    parser.add_argument("--interaction", type=float, default=0.5)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    inference.RESAMPLES = 10  # P(A > B) takes no part in the verdicts
    rng = np.random.default_rng(args.seed)
    print(" ".join(f"{k}={v}" for k, v in vars(args).items()))
    print("searches seeds | family-wise FP (± MC se) | FP of Holm k−1 to best | named winner | "
          "headline coverage")  # fmt: skip
    for searches in args.searches:
        for seeds in args.seeds:
            start = time.perf_counter()
            fp, best, win, cov = cell(args, searches, seeds, rng)
            se = math.sqrt(max(fp * (1 - fp), 0.05 * 0.95) / args.reps)
            took = time.perf_counter() - start
            print(f"{searches} {seeds} | {fp:.4f} (± {se:.4f}) | {best:.4f} | {win:.4f} | "
                  f"{cov:.4f} [{took:.0f} s]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
