"""The outcome of a quality filter: pass, or fail with a stable snake_case reason.

Nothing here raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["REASONS", "Reason", "Verdict"]

Reason = Literal[
    "empty",
    "too_short",
    "repetition",
    "cross_turn_repetition",
    "refusal",
    "leaked_markers",
    "wrong_language",
    "near_duplicate",
    "exact_duplicate",
    "not_evolved",
    "truncated",
]
# Stored per conversation in the run's database: renaming one breaks old runs' statistics.
REASONS: tuple[Reason, ...] = get_args(Reason)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a text passed; if not, a stable ``reason`` and human ``detail`` words."""

    ok: bool
    reason: Reason | None = None
    detail: str = ""

    @classmethod
    def passed(cls, detail: str = "") -> Verdict:
        """A passing verdict, optionally saying why (e.g. "too short to judge language")."""
        return cls(True, None, detail)

    @classmethod
    def failed(cls, reason: Reason, detail: str) -> Verdict:
        """A failing verdict with its reason and what was found."""
        return cls(False, reason, detail)

    def __str__(self) -> str:
        if self.ok:
            return f"ok ({self.detail})" if self.detail else "ok"
        return f"{self.reason}: {self.detail}" if self.detail else str(self.reason)
