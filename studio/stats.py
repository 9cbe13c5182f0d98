"""Rates the honest way: the share, the count and the 95% Wilson score interval.

    >>> format_rate(7, 30)
    '23% (7/30) [12, 41]'

Every rate the studio prints goes through `format_rate`, so a reader sees at once whether two rows
differ; `overlap(a, b)` says when two intervals do not separate them, `below(rate, bar)` when a rate falls
short of a bar beyond its interval.
"""

import math
from dataclasses import dataclass


Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials, as (low, high) shares in [0, 1]."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"a rate needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    """k of n, with its interval; `abstained` counts answers that were neither (kept apart)."""

    k: int
    n: int
    abstained: int = 0

    @property
    def share(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def __str__(self) -> str:
        text = format_rate(self.k, self.n)
        return f"{text}, {self.abstained} abstained" if self.abstained else text

    def as_dict(self) -> dict:
        low, high = self.interval
        return {"k": self.k, "n": self.n, "rate": self.share, "low": low, "high": high, "abstained": self.abstained}


def format_rate(k: int, n: int) -> str:
    """'23% (7/30) [12, 41]': percent, count, and the 95% Wilson interval in percent."""
    if n == 0:
        return "- (0/0)"
    low, high = wilson(k, n)
    return f"{100 * k / n:.0f}% ({k}/{n}) [{100 * low:.0f}, {100 * high:.0f}]"


def below(rate: Rate, bar: float) -> bool:
    """True when the whole 95% interval of `rate` is below the share `bar`: shown to fall short, not by noise."""
    return rate.interval[1] < bar


def overlap(a: Rate, b: Rate) -> bool:
    """True when the two 95% intervals overlap: the rows are not shown to differ."""
    (al, ah), (bl, bh) = a.interval, b.interval
    return not (ah < bl or bh < al)
