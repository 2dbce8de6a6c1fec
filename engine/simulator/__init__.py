"""The embedded OpenAI-compatible simulator: deterministic multilingual replies, OpenAI-shaped
rate limits and 429s, a latency model and injectable faults, served on loopback by aiohttp."""

from __future__ import annotations

from engine.simulator.buckets import Admission, BucketState, RateLimits, TokenBucket
from engine.simulator.faults import body_key, draw_fault
from engine.simulator.languages import LANGUAGES, Language, find_language
from engine.simulator.replies import Reply, ReplyWriter, target_language
from engine.simulator.request import SimRequest, parse_request
from engine.simulator.server import Simulator, run_simulator
from engine.simulator.settings import FAULT_KINDS, FaultRates, SimSettings

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
