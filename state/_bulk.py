"""Many rows in one DuckDB statement: parallel lists unnested into rows, and a UTC timestamp.

A DuckDB statement costs about 0.7 ms of CPU however small, so the journal and the request log
write the rows of a flush with one statement per kind (lists unnested into rows, ~10 µs a row);
a single row keeps its plain statement, which is cheaper than the unnesting one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

__all__ = ["columns", "marks", "now", "unnest"]


def now() -> dt.datetime:
    """The current UTC time, naive, as the store's TIMESTAMP columns hold it."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def marks(n: int) -> str:
    """``?, ?, ...``: n positional parameters."""
    return ", ".join("?" for _ in range(n))


def unnest(types: Sequence[str]) -> str:
    """``unnest($1::T1[]), unnest($2::T2[]), ...``: parallel lists read back as rows.

    The casts give every column its type even when a whole list is NULLs.
    """
    return ", ".join(f"unnest(${i}::{t}[])" for i, t in enumerate(types, start=1))


def columns(rows: Sequence[Sequence[object]]) -> list[list[object]]:
    """Rows turned into one list per column, the shape ``unnest`` reads."""
    return [list(column) for column in zip(*rows, strict=True)]
