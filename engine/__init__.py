"""m2l's async core, and the vocabulary every package shares.

The package itself re-exports only the vocabulary (errors, chat values, clock, config types,
version): ``state``, ``budgets`` and ``prompts`` import from ``engine``, and importing any
``engine.*`` module runs this file first, so it must import nothing of the engine layer (the
dispatcher, limiter, scheduler, simulator) nor of the app (``engine.app``). Import those from
their modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_getattr

if TYPE_CHECKING:
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

# Loaded on first use, not with the package: every `engine.*` import runs this file first,
# and `m2l status` must not pay for the config loader and the chat types it never uses.
_HOMES: dict[str, str] = {
    "ChatRequest": "engine.chat",
    "ChatResult": "engine.chat",
    "Clock": "engine.clock",
    "Config": "engine.config",
    "ConfigError": "engine.errors",
    "Event": "engine.events",
    "EventHook": "engine.events",
    "FakeClock": "engine.clock",
    "FatalRunError": "engine.errors",
    "Hooks": "engine.events",
    "M2LError": "engine.errors",
    "Message": "engine.chat",
    "MonotonicClock": "engine.clock",
    "PermanentRequestError": "engine.errors",
    "RateLimitSnapshot": "engine.headers",
    "RateLimited": "engine.errors",
    "RequestError": "engine.errors",
    "StateError": "engine.errors",
    "TransientError": "engine.errors",
    "Usage": "engine.chat",
    "__version__": "engine.version",
    "load_config": "engine.config",
}


__getattr__ = lazy_getattr("engine", _HOMES)


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
