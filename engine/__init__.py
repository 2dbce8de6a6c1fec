"""m2l's async core: tokens, config, simulator, dispatch, conversations and the CLI.

The package itself exports the values and the dispatch layer; the run pipeline (``engine.run``)
and the subpackages (``engine.simulator``, ``engine.quality``, ``engine.progress``) are imported
from their modules, so importing ``engine`` stays cheap and free of the state store.
"""

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

# After __version__: these modules import it back from the package.
from engine.client import ChatClient
from engine.config import Config, load_config
from engine.dispatcher import Accounting, Dispatcher, NullAccounting
from engine.events import Event, EventHook, Hooks
from engine.limiter import BucketStats, LimiterStats, Limits, Permit, RateLimiter
from engine.retry import (
    GiveUp,
    RateLimitWait,
    RefusalTracker,
    Retry,
    RetryPolicy,
    backoff_delay,
    decide,
)

__all__ = [
    "Accounting",
    "BucketStats",
    "ChatClient",
    "ChatRequest",
    "ChatResult",
    "Clock",
    "Config",
    "ConfigError",
    "Dispatcher",
    "Event",
    "EventHook",
    "FakeClock",
    "FatalRunError",
    "GiveUp",
    "Hooks",
    "LimiterStats",
    "Limits",
    "M2LError",
    "Message",
    "MonotonicClock",
    "NullAccounting",
    "PermanentRequestError",
    "Permit",
    "RateLimitSnapshot",
    "RateLimitWait",
    "RateLimited",
    "RateLimiter",
    "RefusalTracker",
    "RequestError",
    "Retry",
    "RetryPolicy",
    "StateError",
    "TokenCounter",
    "TransientError",
    "Usage",
    "__version__",
    "backoff_delay",
    "decide",
    "encoding_for_model",
    "get_encoding",
    "load_config",
]
