"""Exact and near-duplicate conversations across a run: MinHash signatures with LSH banding.

Written here on numpy (already required by the language identifier) rather than taken from
datasketch: datasketch pulls in scipy, and its LSH index returns unconfirmed candidates unless
every full MinHash (128 x 8 bytes) is kept beside it. This index keeps per conversation only its
band keys, one byte per hash function (b-bit MinHash, Li & König 2010) to confirm candidates,
and an 8-byte digest for exact matches, in compact integer maps (``IntMap``): about 330 bytes
per conversation (12 band keys of 16 bytes, 128 signature bytes, the digest and the id), so
10^6 conversations fit in about 330 MB where Python dictionaries took 1.2 kB each. The pure
helpers (``MinHasher.signature``, ``MinHasher.band_keys``) let a post-hoc pass store band keys
in the run's database instead of holding every conversation here: `m2l filter` keeps each
``Fingerprint`` in DuckDB (state.fingerprints), finds there the conversations that share their
exact key or a band key with another, and feeds only those, in order, to this index. The rest
would have been added and never looked up, so the verdicts are the same, and the index holds
the run's duplicated texts instead of all of them.

Hash functions are seeded, so signatures and band keys are the same in every process and run.
Construction raises FilterConfigError for impossible parameters; nothing else raises.
"""

from __future__ import annotations

import hashlib
import unicodedata
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.quality.config import FilterConfig, FilterConfigError
from engine.quality.intmap import IntMap
from engine.quality.text import units
from engine.quality.verdict import Verdict

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DuplicateMatch",
    "Fingerprint",
    "MinHasher",
    "NearDuplicateIndex",
    "exact_key",
    "lsh_bands",
]

# A prime just above 2**32: with 32-bit shingle hashes and 32-bit coefficients, a * x + b stays
# below 2**64, so the universal hash (a * x + b) mod P is exact in uint64 arithmetic.
_PRIME = (1 << 32) + 15
_CHUNK = 2048  # shingles per step: bounds the temporary (shingles x hash functions) matrix


# Each band's blake2b salt (its index as 16 bytes), made once for the usual numbers of bands.
_SALTS = [band.to_bytes(16, "big") for band in range(256)]


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) for LSH: the most rows per band that still make a pair at ``threshold``
    similarity a candidate with probability 0.9 or more.

    Candidates are confirmed against stored signatures, so the banding errs towards recall;
    more rows mean fewer bands to keep per conversation and fewer candidates to confirm.
    Raises FilterConfigError when ``num_perm`` is below 1.
    """
    if num_perm < 1:
        raise FilterConfigError(f"num_perm = {num_perm}: expected 1 or more")
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= 0.9:
            best = (bands, rows)
    return best


def exact_key(text: str) -> int:
    """A 64-bit digest of ``text`` with case, Unicode form and runs of whitespace folded."""
    folded = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return int.from_bytes(hashlib.blake2b(folded.encode(), digest_size=8).digest(), "big")


class MinHasher:
    """Seeded MinHash over shingles of ``shingle_size`` units (words, or CJK characters)."""

    __slots__ = ("_a", "_b", "num_perm", "seed", "shingle_size")

    def __init__(self, *, num_perm: int = 128, shingle_size: int = 3, seed: int = 0) -> None:
        if num_perm < 1 or shingle_size < 1:
            raise FilterConfigError(
                f"num_perm = {num_perm}, shingle_size = {shingle_size}: both must be 1 or more"
            )
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        # numpy is imported on first use: it costs 0.2 s, paid only by runs that deduplicate.
        import numpy as np

        rng = np.random.Generator(np.random.PCG64(seed))
        self._a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
        self._b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)

    def shingles(self, text: str, items: Sequence[str] | None = None) -> set[str]:
        """The distinct runs of ``shingle_size`` units; a shorter text is one shingle.

        ``items``: the text's units when the caller has them (engine.quality.analysis).
        """
        items = units(text) if items is None else items
        k = self.shingle_size
        if len(items) <= k:
            return {" ".join(items)} if items else set()
        # zip makes the runs and join makes each string, both in C.
        return set(map(" ".join, zip(*(items[i:] for i in range(k)), strict=False)))

    def signature(self, text: str, items: Sequence[str] | None = None) -> npt.NDArray[np.uint64]:
        """The MinHash signature of ``text`` (``num_perm`` values below 2**32 + 15).

        A text without units gets the all-maximum signature, which matches only other empty
        texts.
        """
        import numpy as np

        prime = np.uint64(_PRIME)
        items = units(text) if items is None else items
        k = self.shingle_size
        if len(items) <= k:
            grams = [" ".join(items).encode()] if items else []
        else:
            # The shingles of ``shingles``, each UTF-8 encoded: the units are encoded once and
            # joined as bytes (UTF-8 of a joined string is the join of the UTF-8 of its parts).
            # A shingle met twice is hashed twice: the minimum over a row it already has is
            # the same, and no set of them is made.
            encoded = list(map(str.encode, items))
            grams = list(map(b" ".join, zip(*(encoded[i:] for i in range(k)), strict=False)))
        hashes = np.fromiter(map(zlib.crc32, grams), dtype=np.uint64, count=len(grams))
        out = np.full(self.num_perm, prime, dtype=np.uint64)
        for start in range(0, len(hashes), _CHUNK):
            chunk = hashes[start : start + _CHUNK, None]
            values = chunk * self._a[None, :] + self._b[None, :]
            # values % prime, as values - (values // prime) * prime: numpy divides a uint64
            # array by a scalar with a multiply and shifts (libdivide), about 3x faster than
            # its remainder, which divides each element.
            quotient = values // prime
            quotient *= prime
            values -= quotient
            np.minimum(out, values.min(axis=0), out=out)
        return out

    def band_keys(self, signature: npt.NDArray[np.uint64], bands: int, rows: int) -> list[int]:
        """One signed 64-bit key per band (band index mixed in): fits a BIGINT column."""
        import numpy as np

        # Each band's bytes cut from the signature's bytes (the same as each slice's tobytes).
        raw = np.ascontiguousarray(signature).tobytes()
        width = rows * signature.itemsize
        keys = []
        for band in range(bands):
            digest = hashlib.blake2b(
                raw[band * width : (band + 1) * width],
                digest_size=8,
                salt=_SALTS[band] if band < len(_SALTS) else band.to_bytes(16, "big"),
            ).digest()
            keys.append(int.from_bytes(digest, "big", signed=True))
        return keys


def _signed(key: int) -> int:
    # exact_key is unsigned; IntMap keys are signed 64-bit integers.
    return key - (1 << 64) if key >= 1 << 63 else key


def _bbit(signature: npt.NDArray[np.uint64]) -> bytes:
    # The low byte of each minimum: two signatures agree on it with probability
    # J + (1 - J) / 256, from which J is recovered (b-bit MinHash).
    import numpy as np

    return (signature & np.uint64(0xFF)).astype(np.uint8).tobytes()


def _estimate(a: bytes, b: bytes) -> float:
    import numpy as np

    same = np.count_nonzero(np.frombuffer(a, dtype=np.uint8) == np.frombuffer(b, dtype=np.uint8))
    agree = same / len(a)
    return max(0.0, float(agree - 1 / 256) / (1 - 1 / 256))


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A text as the duplicate index reads it: exact digest, LSH band keys, b-bit signature."""

    exact: int  # the signed exact_key
    band_keys: tuple[int, ...]
    sig: bytes


@dataclass(frozen=True, slots=True)
class DuplicateMatch:
    """An earlier conversation this one duplicates, exactly or nearly (estimated Jaccard)."""

    earlier_id: int
    exact: bool
    similarity: float

    def verdict(self) -> Verdict:
        """The failing filter verdict for the later conversation."""
        if self.exact:
            return Verdict.failed("exact_duplicate", f"same text as conversation {self.earlier_id}")
        return Verdict.failed(
            "near_duplicate",
            f"near-duplicate of conversation {self.earlier_id} "
            f"(estimated similarity {self.similarity:.2f})",
        )


class NearDuplicateIndex:
    """Conversations seen so far in a run, to find exact and near-duplicate later ones.

    Only first occurrences are kept: a duplicate is reported and not added, so the index holds
    one representative per cluster. Not thread-safe; use it from one task.
    """

    __slots__ = (
        "_bands",
        "_exact",
        "_hasher",
        "_ids",
        "_nbands",
        "_rows",
        "_sigs",
        "_slot_of",
        "threshold",
    )

    def __init__(
        self,
        *,
        threshold: float = 0.85,
        num_perm: int = 128,
        shingle_size: int = 3,
        seed: int = 0,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise FilterConfigError(f"near_dup_threshold = {threshold}: expected above 0, to 1")
        self.threshold = threshold
        self._hasher = MinHasher(num_perm=num_perm, shingle_size=shingle_size, seed=seed)
        self._nbands, self._rows = lsh_bands(threshold, num_perm)
        self._bands = IntMap()  # band key -> slot of the first conversation with it
        self._exact = IntMap()  # exact_key (as a signed 64-bit int) -> conversation id
        self._ids = array("q")  # slot -> conversation id
        self._sigs = bytearray()  # slot -> num_perm bytes of b-bit signature
        self._slot_of = IntMap()  # conversation id -> slot

    @classmethod
    def from_config(cls, config: FilterConfig) -> NearDuplicateIndex:
        """An index with the dedup settings of ``config``."""
        return cls(
            threshold=config.near_dup_threshold,
            num_perm=config.dedup_num_perm,
            shingle_size=config.dedup_shingle_size,
            seed=config.dedup_seed,
        )

    @property
    def bands(self) -> tuple[int, int]:
        """(bands, rows per band) of the LSH banding in use."""
        return self._nbands, self._rows

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, conv_id: object) -> bool:
        return isinstance(conv_id, int) and self._slot_of.get(conv_id) is not None

    def add(self, conv_id: int, text: str) -> int | None:
        """Add a conversation; return the id of an earlier (near-)duplicate, or None."""
        found = self.add_match(conv_id, text)
        return None if found is None else found.earlier_id

    def add_match(
        self, conv_id: int, text: str, items: Sequence[str] | None = None
    ) -> DuplicateMatch | None:
        """Add a conversation unless it duplicates an earlier one, which is then returned.

        ``items``: the text's units, when the caller has them. Adding an id again (a resumed
        run replaying its history) is a no-op returning None.
        """
        if self._slot_of.get(conv_id) is not None:
            return None
        key = _signed(exact_key(text))
        earlier = self._exact.get(key)
        if earlier is not None and earlier != conv_id:
            return DuplicateMatch(earlier, True, 1.0)
        signature = self._hasher.signature(text, items)
        keys = self._hasher.band_keys(signature, self._nbands, self._rows)
        return self._add_new(conv_id, key, keys, _bbit(signature))

    def fingerprint(self, text: str, items: Sequence[str] | None = None) -> Fingerprint:
        """What ``add_fingerprint`` needs of ``text``: a pure function of the text and this
        index's settings, so another process may make it (with an index of the same settings).

        ``items``: the text's units, when the caller has them.
        """
        signature = self._hasher.signature(text, items)
        keys = self._hasher.band_keys(signature, self._nbands, self._rows)
        return Fingerprint(_signed(exact_key(text)), tuple(keys), _bbit(signature))

    def add_fingerprint(self, conv_id: int, found: Fingerprint) -> DuplicateMatch | None:
        """``add_match`` for a text whose fingerprint was made already: the same answer."""
        if self._slot_of.get(conv_id) is not None:
            return None
        earlier = self._exact.get(found.exact)
        if earlier is not None and earlier != conv_id:
            return DuplicateMatch(earlier, True, 1.0)
        return self._add_new(conv_id, found.exact, list(found.band_keys), found.sig)

    def _add_new(
        self, conv_id: int, key: int, keys: list[int], sig: bytes
    ) -> DuplicateMatch | None:
        found = self._near(keys, sig)
        if found is not None:
            return found
        slot = len(self._ids)
        self._ids.append(conv_id)
        self._sigs += sig
        self._slot_of.setdefault(conv_id, slot)
        self._exact.setdefault(key, conv_id)
        self._bands.setdefault_many(keys, slot)
        return None

    def query(self, text: str) -> DuplicateMatch | None:
        """The earlier conversation ``text`` duplicates, without adding it."""
        earlier = self._exact.get(_signed(exact_key(text)))
        if earlier is not None:
            return DuplicateMatch(earlier, True, 1.0)
        signature = self._hasher.signature(text)
        keys = self._hasher.band_keys(signature, self._nbands, self._rows)
        return self._near(keys, _bbit(signature))

    def _near(self, keys: list[int], sig: bytes) -> DuplicateMatch | None:
        best: DuplicateMatch | None = None
        width = len(sig)
        for slot in sorted(set(self._bands.get_many(keys))):
            stored = bytes(self._sigs[slot * width : (slot + 1) * width])
            similarity = _estimate(sig, stored)
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = DuplicateMatch(self._ids[slot], False, similarity)
        return best
