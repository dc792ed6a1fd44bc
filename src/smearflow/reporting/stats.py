"""Exact binomial confidence intervals for the percentages of a differential count.

A white-cell differential is a sample: ``k`` cells of a class among ``n``
cells classified. The uncertainty of its percentage depends on ``n`` alone
(for a given ``k``), which is what Rümke's table gives a laboratory: the
Clopper–Pearson ("exact") interval, whose two tails each hold at most
``(1 - level) / 2`` of the binomial probability. At 100 cells, a class seen
10 times lies between 4.9% and 17.6% with 95% confidence.
"""

from __future__ import annotations

import math

__all__ = ["binomial_interval", "percent_interval"]


def binomial_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) confidence interval of a binomial proportion.

    Parameters
    ----------
    successes : int
        Cells of the class, ``0 <= successes <= trials``.
    trials : int
        Cells classified, at least 1.
    level : float
        Confidence level, in (0, 1).

    Returns
    -------
    (low, high) : tuple of float
        Proportions in [0, 1]; ``low`` is 0 when ``successes`` is 0 and
        ``high`` is 1 when ``successes`` equals ``trials``.

    Raises
    ------
    ValueError
        When ``trials`` is below 1, ``successes`` is outside ``[0, trials]``
        or ``level`` is not in (0, 1).
    """
    for name, value in (("successes", successes), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer. Received: {name}={value!r}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1. Received: trials={trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials={trials}]. Received: successes={successes}")
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0 and math.isfinite(level)):
        raise ValueError(f"level must be in (0, 1). Received: level={level!r}")
    from scipy.stats import beta

    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return low, high


def percent_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float] | None:
    """:func:`binomial_interval` in percent, rounded to 0.1; ``None`` when nothing was counted (``trials`` 0)."""
    if trials == 0:
        return None
    low, high = binomial_interval(successes, trials, level)
    return round(100.0 * low, 1), round(100.0 * high, 1)
