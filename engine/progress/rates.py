"""Sliding-window counters: amounts over the last N seconds in a fixed ring of time buckets.

Raises ValueError for a window that is not a positive whole number of buckets.
"""

from __future__ import annotations

from itertools import compress

__all__ = ["SlidingCounter"]


class SlidingCounter:
    """Sums of amounts over the last ``span_s`` seconds, bucketed: O(1) per add, no event lists.

    Each slot remembers which bucket it holds, so a slot left over from an earlier lap of the
    ring is recognised and reset on write and skipped on read; reads never mutate, and a long
    silence costs nothing to catch up on.
    """

    __slots__ = ("_bucket_s", "_counts", "_n", "_stamps")

    def __init__(self, span_s: float = 60.0, bucket_s: float = 1.0) -> None:
        n = round(span_s / bucket_s) if bucket_s > 0 else 0
        if n < 1 or abs(n * bucket_s - span_s) > 1e-9 * span_s:
            raise ValueError(
                f"a sliding window of {span_s} s cannot be cut into {bucket_s} s buckets; "
                "use a span that is a positive multiple of the bucket"
            )
        self._bucket_s = bucket_s
        self._n = n
        self._counts = [0.0] * n
        self._stamps = [-(2**62)] * n  # a bucket number no real clock reading produces

    @property
    def span_s(self) -> float:
        return self._n * self._bucket_s

    def add(self, t: float, amount: float = 1.0) -> None:
        """Count ``amount`` at time ``t`` (seconds on the model's clock)."""
        bucket = int(t // self._bucket_s)
        i = bucket % self._n
        if self._stamps[i] == bucket:
            self._counts[i] += amount
        else:
            self._stamps[i] = bucket
            self._counts[i] = amount

    def total(self, now: float) -> float:
        """The sum of the amounts counted in the window that ends at ``now``."""
        oldest = int(now // self._bucket_s) - self._n + 1
        # Stamps only grow, so every slot at or after ``oldest`` is inside the window;
        # compress/map keep the loop in C (the snapshot sums ~70 of these 4 times a second).
        return sum(compress(self._counts, map(oldest.__le__, self._stamps)))

    def rate(self, now: float, since: float) -> float:
        """Amount per second over the window, or over ``[since, now]`` when that is shorter.

        The divisor never drops below one bucket, so the first event after a start does not
        read as a huge rate.
        """
        newest = int(now // self._bucket_s)
        window_start = (newest - self._n + 1) * self._bucket_s
        covered = max(now - max(window_start, since), self._bucket_s)
        return self.total(now) / covered
