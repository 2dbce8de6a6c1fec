"""Number, duration and money formatting shared by the dashboard, log lines and summaries.

Nothing here raises: every function turns any figure (including None) into short text.
"""

from __future__ import annotations

import math

__all__ = ["ago", "compact", "count", "duration", "percent", "usd"]

# The plain-text placeholder for a figure that is not known yet (rich uses an em dash).
UNKNOWN = "-"


def count(n: float) -> str:
    """An exact count with thousands separators: ``12,345``."""
    return f"{round(n):,}"


def compact(n: float | None) -> str:
    """A large figure in three significant digits: ``950``, ``12.3k``, ``1.23M``."""
    if n is None or not math.isfinite(n):
        return UNKNOWN
    size = abs(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            scaled = n / limit
            digits = 2 if abs(scaled) < 10 else 1 if abs(scaled) < 100 else 0
            return f"{scaled:.{digits}f}{suffix}"
    return f"{n:.0f}" if size >= 10 or n == round(n) else f"{n:.1f}"


def duration(seconds: float | None) -> str:
    """``H:MM:SS`` (with days in front past 24 h); UNKNOWN for None or infinity."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return UNKNOWN
    total = round(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def percent(fraction: float | None) -> str:
    """A fraction as ``43.2%``; UNKNOWN for None."""
    if fraction is None or not math.isfinite(fraction):
        return UNKNOWN
    return f"{fraction * 100:.1f}%"


def usd(amount: float | None) -> str:
    """Dollars with cents, or four decimals below one cent so tiny test runs are not all $0.00."""
    if amount is None or not math.isfinite(amount):
        return UNKNOWN
    if amount != 0 and abs(amount) < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"


def ago(seconds: float | None) -> str:
    """How long ago, at a glance: ``12 s ago``, ``5 min ago``, ``2:03:04 ago``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return UNKNOWN
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    return f"{duration(seconds)} ago"
