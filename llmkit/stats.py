"""Summary statistics shared by recipes, grids and experiment tables."""

from __future__ import annotations

import statistics
from typing import Iterable


def mean_std(values: Iterable[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of `values`.

    `ddof` 0 is the population std (what LM-BFF-style seed grids report); 1 is the sample std, which is 0
    for a single value instead of undefined. Computed with `statistics` (exactly rounded sums), so the result
    does not depend on the order or container of the values.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, not {ddof}")
    std = statistics.pstdev(values) if ddof == 0 else (statistics.stdev(values) if len(values) > 1 else 0.0)
    return statistics.fmean(values), std
