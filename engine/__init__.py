"""m2l's async core, and the vocabulary every package shares.

The package itself re-exports only the vocabulary (errors, chat values, clock, config types,
version): ``state``, ``budgets`` and ``prompts`` import from ``engine``, and importing any
``engine.*`` module runs this file first, so it must import nothing of the engine layer (the
dispatcher, limiter, scheduler, simulator) nor of the app (``engine.app``). Import those from
their modules.
"""

from __future__ import annotations

from engine.chat import ChatRequest, ChatResult, Message, Usage
from engine.clock import Clock, FakeClock, MonotonicClock
from engine.config import Config, load_config
from engine.errors import (
    ConfigError,
    FatalRunError,
    M2LError,
    PermanentRequestError,
    RateLimited,
    RequestError,
    StateError,
    TransientError,
)
from engine.events import Event, EventHook, Hooks
from engine.headers import RateLimitSnapshot
from engine.version import __version__

__all__ = [
    "ChatRequest",
    "ChatResult",
    "Clock",
    "Config",
    "ConfigError",
    "Event",
    "EventHook",
    "FakeClock",
    "FatalRunError",
    "Hooks",
    "M2LError",
    "Message",
    "MonotonicClock",
    "PermanentRequestError",
    "RateLimitSnapshot",
    "RateLimited",
    "RequestError",
    "StateError",
    "TransientError",
    "Usage",
    "__version__",
    "load_config",
]
