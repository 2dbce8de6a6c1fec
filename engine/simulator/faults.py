"""Deterministic draws: the body key of a request, and which fault (if any) an attempt gets.

Every random choice of the simulator comes from a hash of (simulator seed, purpose, body key,
attempt number), never from arrival order or wall time, so a crashed and resumed run sees the
same replies, and a retried identical request gets a fresh fault draw. Nothing here raises.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Sequence

import orjson

from engine.simsettings import FAULT_KINDS, FaultRates

__all__ = ["body_key", "draw_fault", "rng_for", "uniform"]

_PACK = struct.Struct("<QQ")  # simulator seed, attempt number (both taken modulo 2**64)
_MASK = (1 << 64) - 1
_UNIT = float(1 << 64)


def body_key(
    model: str,
    messages: Sequence[tuple[str, str]],
    max_tokens: int | None,
    seed: int | None,
) -> bytes:
    """A 16-byte digest of what decides a reply: model, (role, content) pairs, max_tokens, seed."""
    # The seed goes in as text: JSON bodies may carry integers wider than orjson's 64 bits.
    seed_text = None if seed is None else str(seed)
    payload = orjson.dumps([model, [list(m) for m in messages], max_tokens, seed_text])
    return hashlib.blake2b(payload, digest_size=16).digest()


def _digest(seed: int, purpose: bytes, key: bytes, attempt: int) -> bytes:
    # Python's hash() is salted per process; blake2b is stable across processes and machines.
    h = hashlib.blake2b(digest_size=8, person=purpose[:16].ljust(16, b"\0"))
    h.update(_PACK.pack(seed & _MASK, attempt & _MASK))
    h.update(key)
    return h.digest()


def uniform(seed: int, purpose: bytes, key: bytes, attempt: int = 0) -> float:
    """A float in [0, 1) that depends only on its arguments."""
    return int.from_bytes(_digest(seed, purpose, key, attempt), "little") / _UNIT


def rng_for(seed: int, purpose: bytes, key: bytes, attempt: int = 0) -> random.Random:
    """A ``random.Random`` seeded from the arguments (int seeds are stable across runs)."""
    return random.Random(int.from_bytes(_digest(seed, purpose, key, attempt), "little"))


def draw_fault(seed: int, key: bytes, attempt: int, rates: FaultRates) -> str | None:
    """The fault kind for the ``attempt``-th admission of this body key, or None for none.

    One uniform draw is split into consecutive intervals, one per kind, so each kind occurs at
    exactly its rate and at most one fault hits an attempt.
    """
    if rates.total <= 0.0:
        return None
    u = uniform(seed, b"m2l-sim-fault", key, attempt)
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += getattr(rates, kind)
        if u < edge:
            return kind
    return None
