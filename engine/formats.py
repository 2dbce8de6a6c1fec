"""Number, duration and money formatting: the one place m2l turns a figure into text, for the
dashboard, log lines, summaries, ``m2l status``, ``m2l estimate`` and the HTML report.

Nothing here raises: every function turns any figure (including None) into short text.
"""

from __future__ import annotations

import math

__all__ = ["ago", "compact", "count", "duration", "percent", "usd"]

# The plain-text placeholder for a figure that is not known yet (rich uses an em dash).
UNKNOWN = "-"
# A nano-dollar is the ledger's unit: no amount is known more finely.
_USD_MAX_DECIMALS = 9


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
    """Dollars: cents from $1 up (``$1,234.57``); below, four significant digits with at least
    cents (``$0.12``, ``$0.3142``, ``$0.004217``), so a small run never reads as ``$0.00``."""
    if amount is None or not math.isfinite(amount):
        return UNKNOWN
    size = abs(amount)
    if size >= 1 or size == 0:
        return f"${amount:,.2f}"
    decimals = min(max(2, 3 - math.floor(math.log10(size))), _USD_MAX_DECIMALS)
    digits = f"{size:.{decimals}f}".rstrip("0")
    if len(digits.partition(".")[2]) < 2:
        digits = f"{size:.2f}"
    return f"{'-' if amount < 0 else ''}${digits}"


def ago(seconds: float | None) -> str:
    """How long ago, at a glance: ``12 s ago``, ``90 s ago``, ``5 min ago``, ``2:03:04 ago``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return UNKNOWN
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    return f"{duration(seconds)} ago"
