"""The embedded OpenAI-compatible simulator: deterministic multilingual replies, OpenAI-shaped
rate limits and 429s, a latency model and injectable faults, served on loopback by aiohttp."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_getattr
from engine.simsettings import FAULT_KINDS, FaultRates, SimSettings

if TYPE_CHECKING:
    from engine.simulator.buckets import Admission, BucketState, RateLimits, TokenBucket
    from engine.simulator.faults import body_key, draw_fault
    from engine.simulator.languages import LANGUAGES, Language, find_language
    from engine.simulator.replies import Reply, ReplyWriter, target_language
    from engine.simulator.request import SimRequest, parse_request
    from engine.simulator.server import Simulator, run_simulator

# Every m2l process reads SimSettings (it is part of the run config), but only a run that uses
# the simulator needs its server, word lists and tokenizer: those load on first use (~0.3 s).
_LAZY = {
    "Admission": "buckets",
    "BucketState": "buckets",
    "RateLimits": "buckets",
    "TokenBucket": "buckets",
    "body_key": "faults",
    "draw_fault": "faults",
    "LANGUAGES": "languages",
    "Language": "languages",
    "find_language": "languages",
    "Reply": "replies",
    "ReplyWriter": "replies",
    "target_language": "replies",
    "SimRequest": "request",
    "parse_request": "request",
    "Simulator": "server",
    "run_simulator": "server",
}

__getattr__ = lazy_getattr(
    "engine.simulator", {name: f"engine.simulator.{home}" for name, home in _LAZY.items()}
)


__all__ = [
    "FAULT_KINDS",
    "LANGUAGES",
    "Admission",
    "BucketState",
    "FaultRates",
    "Language",
    "RateLimits",
    "Reply",
    "ReplyWriter",
    "SimRequest",
    "SimSettings",
    "Simulator",
    "TokenBucket",
    "body_key",
    "draw_fault",
    "find_language",
    "parse_request",
    "run_simulator",
    "target_language",
]
