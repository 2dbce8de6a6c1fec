"""Failure reasons grouped by kind: texts that differ only in ids, counts or quotes are one.

A leaf module: the run's health watch uses it to see that conversations fail "for the same
reason", and summaries use it to list 34 malformed bodies as one line with a count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["by_family", "reason_family"]

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|«[^»]*»")
_HEXISH = re.compile(r"\b(?=[0-9a-f_-]*\d)[0-9a-f][0-9a-f_-]{7,}\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")
_MAX = 120


def reason_family(reason: str | None) -> str:
    """``reason`` with its particulars (quoted text, ids, numbers) replaced, for grouping.

    ``"wrong_language after 3 tries"`` and ``"wrong_language after 2 tries"`` share a family;
    two malformed bodies that began differently do too. None (no reason given) is ``"unknown"``.
    """
    if not reason or not reason.strip():
        return "unknown"
    text = _QUOTED.sub("'…'", reason)
    text = _HEXISH.sub("#", text)
    text = _NUMBER.sub("N", text)
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= _MAX else text[: _MAX - 1] + "…"


def by_family(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts by reason summed by family (``reason_family``)."""
    out: dict[str, int] = {}
    for reason, n in counts.items():
        family = reason_family(reason)
        out[family] = out.get(family, 0) + n
    return out
