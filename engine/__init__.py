"""m2l's async core: tokens, config, simulator, dispatch, conversations and the CLI."""

from __future__ import annotations

from engine.chat import ChatRequest, ChatResult, Message, Usage
from engine.clock import Clock, FakeClock, MonotonicClock
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
from engine.headers import RateLimitSnapshot
from engine.tokens import TokenCounter, encoding_for_model, get_encoding

__version__ = "0.1.0"

__all__ = [
    "ChatRequest",
    "ChatResult",
    "Clock",
    "ConfigError",
    "FakeClock",
    "FatalRunError",
    "M2LError",
    "Message",
    "MonotonicClock",
    "PermanentRequestError",
    "RateLimitSnapshot",
    "RateLimited",
    "RequestError",
    "StateError",
    "TokenCounter",
    "TransientError",
    "Usage",
    "__version__",
    "encoding_for_model",
    "get_encoding",
]
