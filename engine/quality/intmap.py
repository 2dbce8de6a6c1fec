"""A compact map from 64-bit integers to integers, for indexes that grow with a whole run.

A Python ``dict[int, int]`` costs about 100 bytes per entry (two int objects and a slot); a run
of 10^6 conversations with 12 LSH band keys each would hold 1.2 GB that way. Here recent
entries sit in a small dict and older ones in two sorted numpy arrays (8 bytes per key, 8 per
value): about 16 bytes per entry. The dict is merged into the arrays when it reaches an eighth
of their size, so merging costs O(1) amortised per entry and the dict never holds more than
an eighth of the entries. Nothing here raises.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["IntMap"]

# Entries the dict holds before its first merge: small maps never touch numpy arrays.
_MIN_BUFFER = 1 << 14


class IntMap:
    """Integer keys to integer values; a key keeps the value it was first given."""

    __slots__ = ("_buffer", "_keys", "_values")

    def __init__(self) -> None:
        import numpy as np  # the dedup index imports numpy on first use too

        self._buffer: dict[int, int] = {}
        self._keys: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._values: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._buffer) + len(self._keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.get(key) is not None

    def get(self, key: int) -> int | None:
        """The value of ``key``, or None."""
        found = self._buffer.get(key)
        if found is not None or not len(self._keys):
            return found
        import numpy as np

        at = int(np.searchsorted(self._keys, key))
        if at < len(self._keys) and int(self._keys[at]) == key:
            return int(self._values[at])
        return None

    def get_many(self, keys: Iterable[int]) -> list[int]:
        """The values of those ``keys`` that are present, in no particular order."""
        keys = list(keys)
        out: list[int] = []
        missing = []
        for key in keys:
            found = self._buffer.get(key)
            if found is not None:
                out.append(found)
            else:
                missing.append(key)
        if missing and len(self._keys):
            at, hit = self._search(missing)
            out.extend(int(v) for v in self._values[at[hit]])
        return out

    def setdefault(self, key: int, value: int) -> int:
        """Store ``value`` for ``key`` unless the key is present; return the key's value."""
        found = self.get(key)
        if found is not None:
            return found
        self._buffer[key] = value
        if len(self._buffer) >= max(_MIN_BUFFER, len(self._keys) // 8):
            self._merge()
        return value

    def setdefault_many(self, keys: Iterable[int], value: int) -> None:
        """``setdefault(key, value)`` for each of ``keys`` in turn: the keys already present
        are found with one search of the arrays instead of one per key."""
        buffer = self._buffer
        missing = [key for key in keys if key not in buffer]
        if missing and len(self._keys):
            _, hit = self._search(missing)
            missing = [key for key, found in zip(missing, hit.tolist(), strict=True) if not found]
        for key in missing:
            buffer.setdefault(key, value)  # a key twice in ``keys`` keeps its first value
        if len(buffer) >= max(_MIN_BUFFER, len(self._keys) // 8):
            self._merge()

    def _search(self, keys: list[int]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Where each of ``keys`` sits in the sorted arrays, and whether it is there."""
        import numpy as np

        wanted = np.array(keys, dtype=np.int64)
        at = np.searchsorted(self._keys, wanted)
        inside = at < len(self._keys)
        hit = np.zeros(len(wanted), dtype=bool)
        hit[inside] = self._keys[at[inside]] == wanted[inside]
        return at, hit

    def _merge(self) -> None:
        import numpy as np

        keys = np.fromiter(self._buffer.keys(), dtype=np.int64, count=len(self._buffer))
        values = np.fromiter(self._buffer.values(), dtype=np.int64, count=len(self._buffer))
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        # Buffered keys are absent from the arrays (setdefault checked), so an insert at each
        # one's sorted position keeps the arrays sorted and their keys unique.
        at = np.searchsorted(self._keys, keys)
        self._keys = np.insert(self._keys, at, keys)
        self._values = np.insert(self._values, at, values)
        self._buffer = {}
