"""Null rejection rate of three df rules for a mean whose variance has a few-cluster part.

    python scripts/protocol_rules.py

The model behind protocol.inference, by numerical integration (no simulation): the estimate is
normal with variance θ_u + θ_e; the cluster part's estimate is θ_u·χ²_k/k (k = clusters − 1),
the test-set part's is θ_e with N − 1 = 9,999 df. w = θ_u / (θ_u + θ_e). Printed: the rejection
rate divided by the nominal level alpha (1.00 = exact, above = liberal) for Satterthwaite's df,
the containment df (k), and Banerjee's interval (each part scaled by its own t quantile).
alpha 0.05/3 and 0.05/15 are Holm's first steps with 3 and 6 optimizers.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

N, W = 10_000, (0.1, 0.3, 0.5, 0.7, 0.9, 0.95)
GRID = (np.arange(20_000) + 0.5) / 20_000  # quantiles of the chi-square


def rate(k: int, w: float, alpha: float, rule) -> float:
    vu = w * stats.chi2.ppf(GRID, k) / k
    ve = np.full_like(vu, 1 - w)
    crit = rule(vu, ve, k, alpha)  # reject when |estimate| > crit (true sd 1)
    return float(np.mean(2 * stats.norm.sf(crit)))


def satterthwaite(vu, ve, k, alpha):
    df = (vu + ve) ** 2 / (vu**2 / k + ve**2 / (N - 1))
    return stats.t.isf(alpha / 2, df) * np.sqrt(vu + ve)


def containment(vu, ve, k, alpha):
    return stats.t.isf(alpha / 2, k) * np.sqrt(vu + ve)


def banerjee(vu, ve, k, alpha):
    return np.sqrt(
        vu * special.stdtrit(k, alpha / 2) ** 2 + ve * stats.t.isf(alpha / 2, N - 1) ** 2
    )


def main() -> None:
    print("rule          alpha    k | rate / alpha at w = " + " ".join(f"{w:>5}" for w in W))
    for alpha in (0.05, 0.05 / 3, 0.05 / 15):
        for k in (1, 2, 4):
            for name, rule in (("satterthwaite", satterthwaite), ("containment", containment),
                               ("banerjee", banerjee)):  # fmt: skip
                ratios = " ".join(f"{rate(k, w, alpha, rule) / alpha:5.2f}" for w in W)
                print(f"{name:13s} {alpha:.4f} {k:2d} | {' ' * 20}{ratios}")


if __name__ == "__main__":
    main()
