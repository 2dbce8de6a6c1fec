"""Pure decisions of batch mode: which ready lines go into which input file, when a file goes
out, how often an open batch is polled, and when the run's tail finishes online.

No I/O and no clock: callers pass the times. ``split_files`` raises OversizeLine for a line
larger than a whole file may be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

__all__ = [
    "API_MAX_BYTES",
    "API_MAX_LINES",
    "FileLimits",
    "OversizeLine",
    "SubmitPolicy",
    "expected_waves",
    "poll_delay",
    "split_files",
    "tail_active",
]

# OpenAI's limits for one batch input file.
API_MAX_LINES: Final = 50_000
API_MAX_BYTES: Final = 200 * 1024 * 1024

T = TypeVar("T")


class OversizeLine(ValueError):
    """One request line is larger than an input file may be."""


@dataclass(frozen=True, slots=True)
class FileLimits:
    """How large one input file may get: the API's limits, or smaller ones the user set."""

    max_lines: int = API_MAX_LINES
    max_bytes: int = API_MAX_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.max_lines <= API_MAX_LINES:
            raise ValueError(f"max_lines must be in 1..{API_MAX_LINES}, got {self.max_lines}")
        if not 1 <= self.max_bytes <= API_MAX_BYTES:
            raise ValueError(f"max_bytes must be in 1..{API_MAX_BYTES}, got {self.max_bytes}")


def split_files(items: Sequence[T], sizes: Sequence[int], limits: FileLimits) -> list[list[T]]:
    """The items in order, cut into files of at most max_lines lines and max_bytes bytes.

    ``sizes[i]`` is item i's encoded line length without its newline. Raises OversizeLine when
    one line alone does not fit in a file.
    """
    if len(items) != len(sizes):
        raise ValueError(f"{len(items)} items but {len(sizes)} sizes")
    files: list[list[T]] = []
    current: list[T] = []
    used = 0
    for item, size in zip(items, sizes, strict=True):
        need = size + 1  # the newline after every line
        if need > limits.max_bytes:
            raise OversizeLine(
                f"a request line of {size} bytes is larger than a batch input file may be "
                f"({limits.max_bytes} bytes)"
            )
        if current and (len(current) >= limits.max_lines or used + need > limits.max_bytes):
            files.append(current)
            current, used = [], 0
        current.append(item)
        used += need
    if current:
        files.append(current)
    return files


@dataclass(frozen=True, slots=True)
class SubmitPolicy:
    """When the lines waiting to go out become a batch.

    A full file goes at once. Otherwise the waiting lines go when no new line has joined for
    ``quiet_s`` (the results that readied them have all been applied, so the wave is complete)
    or the oldest has waited ``linger_s`` (a steady trickle never holds a line back for long).
    """

    batch_lines: int = API_MAX_LINES
    linger_s: float = 30.0
    quiet_s: float = 0.5

    def due(self, waiting: int, oldest_at: float, newest_at: float, now: float) -> bool:
        if waiting <= 0:
            return False
        if waiting >= self.batch_lines:
            return True
        return now - newest_at >= self.quiet_s or now - oldest_at >= self.linger_s

    def wake_at(self, oldest_at: float, newest_at: float) -> float:
        """The next time ``due`` can turn true with no new line joining."""
        return min(newest_at + self.quiet_s, oldest_at + self.linger_s)


def poll_delay(age_s: float, *, min_s: float, max_s: float) -> float:
    """Seconds until an open batch is polled again: a tenth of its age, within [min_s, max_s].

    A young batch is checked often (the simulator's finish in seconds); a batch hours old,
    about once a minute: a 24-hour window needs no faster polling, and polls cost requests.
    """
    return min(max(age_s / 10.0, min_s), max_s)


def tail_active(unfinished: int, threshold: int) -> bool:
    """Whether the run's last conversations should finish online (batch.finish_online_below)."""
    return threshold > 0 and unfinished < threshold


def expected_waves(steps_per_conversation: Sequence[int], attempts_per_step: float = 1.0) -> int:
    """How many batch rounds a run needs: its longest conversation's steps, one per round, with
    regenerations and retries stretching it by ``attempts_per_step``."""
    longest = max(steps_per_conversation, default=0)
    return math.ceil(longest * max(attempts_per_step, 1.0))
