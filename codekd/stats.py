"""Means and paired tests over seeds, shared by the report's tables and its claims."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Iterable

from scipy.stats import ttest_rel

ALPHA = 0.05


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); std is None with fewer than two values."""
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_test(a: dict[int, float], b: dict[int, float]) -> tuple[int, float | None]:
    """(number of common seeds, paired t-test p-value of a vs b over them); p is None below two pairs.

    Identical differences make the t statistic NaN: p is then 1.0 when they are all zero, else 0.0.
    """
    seeds = sorted(a.keys() & b.keys())
    if len(seeds) < 2:
        return len(seeds), None
    x, y = [a[s] for s in seeds], [b[s] for s in seeds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision-loss warning on near-equal data
        p = float(ttest_rel(x, y).pvalue)
    if math.isnan(p):
        p = 1.0 if x == y else 0.0
    return len(seeds), p
