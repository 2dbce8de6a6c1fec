"""A total projected from a sample: the mean times the population, with a 95% t interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Extrapolation", "extrapolate", "t95"]

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a t interval needs at least two samples")
    return _T95[df - 1] if df <= len(_T95) else 1.96


@dataclass(frozen=True, slots=True)
class Extrapolation:
    """A total projected from a sample mean, with a 95% interval."""

    total: float
    low: float
    high: float


def extrapolate(samples: Sequence[float], population: int) -> Extrapolation:
    """``population`` × the sample mean, with a 95% interval for the total of ``population``
    new draws: the mean's own uncertainty (population² s²/n) plus the spread of the draws
    themselves (population s²). Raises ValueError for fewer than two samples."""
    n = len(samples)
    if n < 2:
        raise ValueError("extrapolating needs at least two pilot conversations")
    mean = sum(samples) / n
    var = sum((x - mean) ** 2 for x in samples) / (n - 1)
    half = t95(n - 1) * math.sqrt(population * population * var / n + population * var)
    total = population * mean
    return Extrapolation(total, max(total - half, 0.0), total + half)
