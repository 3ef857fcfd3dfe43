"""What a campaign did: conversion per group, the uplift with its 95 % interval, incremental buyers
and revenue, and the return on its cost.

The uplift is the difference in conversion between the contacted (treated) members and the held-out
ones; its interval is Newcombe's hybrid score interval for a difference of two independent
proportions (``statsmodels``' ``confint_proportions_2indep(method="newcomb")``), which keeps its
coverage at the low conversion rates of retail campaigns (a few percent) where the Wald interval
does not. Revenue per member is compared with a Welch (unequal variances) normal interval.

Examples
--------
>>> u = uplift(120, 1000, 10, 100)
>>> round(u.estimate, 3), u.low < u.estimate < u.high
(0.02, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import norm

Z95 = float(norm.ppf(0.975))


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.excludes_zero}


def conversion(buyers: int, members: int) -> float | None:
    return buyers / members if members else None


def uplift(buyers_t: int, n_t: int, buyers_c: int, n_c: int, level: float = 0.95) -> Interval | None:
    """Conversion of the treated minus conversion of the comparison group, with Newcombe's
    interval; None when a group is empty."""
    if n_t <= 0 or n_c <= 0:
        return None
    from statsmodels.stats.proportion import confint_proportions_2indep

    low, high = confint_proportions_2indep(buyers_t, n_t, buyers_c, n_c, method="newcomb", compare="diff",
                                           alpha=1 - level)
    return Interval(buyers_t / n_t - buyers_c / n_c, float(low), float(high), level)


def mean_difference(sum_t: float, sq_t: float, n_t: int, sum_c: float, sq_c: float, n_c: int,
                    level: float = 0.95) -> Interval | None:
    """Difference of two means from their sums and sums of squares (Welch, normal quantile)."""
    if n_t < 2 or n_c < 2:
        return None
    mean_t, mean_c = sum_t / n_t, sum_c / n_c
    var_t = max(sq_t - n_t * mean_t**2, 0.0) / (n_t - 1)
    var_c = max(sq_c - n_c * mean_c**2, 0.0) / (n_c - 1)
    se = math.sqrt(var_t / n_t + var_c / n_c)
    z = float(norm.ppf(0.5 + level / 2))
    d = mean_t - mean_c
    return Interval(d, d - z * se, d + z * se, level)


def roi(incremental_revenue: float, contacts: int, cost_per_contact: float, margin: float) -> dict[str, float] | None:
    """Return on the campaign's cost: (incremental revenue x margin - cost) / cost, with the parts."""
    cost = contacts * cost_per_contact
    if cost <= 0:
        return None
    profit = incremental_revenue * margin
    return {"cost": cost, "incremental_margin": profit, "net": profit - cost, "roi": (profit - cost) / cost}
