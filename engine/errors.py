"""m2l's exception hierarchy: small, flat, grouped by what the caller must do.

Third-party errors (aiohttp, DuckDB, TOML) are translated into these once, at the boundary
where they happen, so the rest of the engine only ever reasons about these classes.

Every request error class states two facts the request log stores and the budget relies on:
``error_class``, a stable name written into the request table (renaming a Python class must
not change what old rows mean, so the name is spelt out, never derived), and ``billed``,
whether an attempt that reached the server and failed this way may have been charged.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationFailed",
    "BudgetExhausted",
    "CapacityUnavailable",
    "ConfigError",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionLost",
    "ConnectionRefused",
    "ContentFiltered",
    "ContextLengthExceeded",
    "FatalRunError",
    "HostNotFound",
    "M2LError",
    "MalformedResponse",
    "ModelNotFound",
    "NotChatCompletions",
    "OversizeRequest",
    "PermanentRequestError",
    "PermissionDenied",
    "RateLimited",
    "RequestError",
    "RequestTimeout",
    "ServerError",
    "ServerUnreachable",
    "StateError",
    "SystematicFailure",
    "TransientError",
    "UnsupportedParameter",
    "request_error_classes",
]


class M2LError(Exception):
    """Base of every error m2l raises on purpose; its message is meant for the user."""


class ConfigError(M2LError):
    """A configuration file, option or input file is wrong; the message names it and the fix."""


class StateError(M2LError):
    """The run's state store is missing, corrupt, locked, or from an incompatible version."""


class BudgetExhausted(M2LError):
    """A request would take the run past one of its caps."""


# --- request outcomes -------------------------------------------------------------------------


class RequestError(M2LError):
    """A chat request did not produce a usable reply."""

    # The stable name stored in the request table; each subclass spells out its own.
    error_class: ClassVar[str] = "request_error"
    # Whether an admitted attempt that failed this way may have been billed. The provider bills
    # completed generations; an error answered before generating anything is free. Counting a
    # free failure as billed costs some headroom; the reverse would let a cap be passed, so
    # an error of unknown kind counts as billed.
    billed: ClassVar[bool] = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(RequestError):
    """Worth retrying after a backoff: the same request may well succeed."""

    error_class = "transient_error"
    billed = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ServerError(TransientError):
    """The server answered 5xx."""

    error_class = "server_error"
    billed = False  # answered 5xx: nothing was generated


class RequestTimeout(TransientError):
    """Connecting or reading took longer than the configured timeout."""

    error_class = "request_timeout"
    billed = True  # the model may have generated it all


class ConnectionLost(TransientError):
    """The connection was reset or closed before the whole response arrived."""

    error_class = "connection_lost"
    billed = True  # cut mid-body: generated, maybe billed


class ConnectFailed(TransientError):
    """No connection was made, so the request never left this machine and cost nothing.

    Not one of the request's attempts: the run waits for the server (with backoff) up to
    ``retry.unreachable_s`` before it stops with ServerUnreachable.
    """

    error_class = "connect_failed"
    billed = False  # never left this machine


class ConnectionRefused(ConnectFailed):
    """Nothing listens at the base URL (or the host is unreachable)."""

    error_class = "connection_refused"
    billed = False


class ConnectTimeout(ConnectFailed):
    """The connection could not be opened within ``provider.connect_timeout_s``."""

    error_class = "connect_timeout"
    billed = False


class HostNotFound(ConnectFailed):
    """The base URL's host name does not resolve (fatal at once if it never resolved)."""

    error_class = "host_not_found"
    billed = False


class MalformedResponse(TransientError):
    """The body was not the JSON shape an OpenAI-compatible server returns."""

    error_class = "malformed_response"
    billed = True  # a 200 whose body broke: generated


class RateLimited(RequestError):
    """HTTP 429: the provider's rate limit was hit; the limiter pauses everyone until reset."""

    error_class = "rate_limited"
    billed = False  # refused before generating

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        limit_kind: str | None = None,
        ratelimit: object | None = None,
    ) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after
        self.limit_kind = limit_kind  # "requests" | "tokens" | None
        self.ratelimit = ratelimit  # engine.headers.RateLimitSnapshot | None


class PermanentRequestError(RequestError):
    """This request will never succeed as it is; its conversation fails with this reason."""

    error_class = "permanent_request_error"
    billed = True


class ContextLengthExceeded(PermanentRequestError):
    """The prompt plus max_tokens is longer than the model's context window."""

    error_class = "context_length_exceeded"
    billed = False  # refused before generating


class ContentFiltered(PermanentRequestError):
    """The provider's content filter refused the prompt or the reply."""

    error_class = "content_filtered"
    billed = True  # a filtered reply may have been generated


class OversizeRequest(PermanentRequestError):
    """The request's token charge is larger than the whole token bucket: it could never be sent."""

    error_class = "oversize_request"
    billed = False  # never sent


class FatalRunError(RequestError):
    """Nothing will succeed until the user fixes something; the run stops early."""

    error_class = "fatal_run_error"
    billed = True


class AuthenticationFailed(FatalRunError):
    """HTTP 401: the API key is missing or wrong."""

    error_class = "authentication_failed"
    billed = False


class PermissionDenied(FatalRunError):
    """HTTP 403: the key may not use this model or endpoint."""

    error_class = "permission_denied"
    billed = False


class ModelNotFound(FatalRunError):
    """HTTP 404: the model (or the endpoint) does not exist at this base URL."""

    error_class = "model_not_found"
    billed = False


class ServerUnreachable(FatalRunError):
    """The server could not be reached for ``retry.unreachable_s``, or its host never resolved."""

    error_class = "server_unreachable"
    billed = False  # never reached a server


class NotChatCompletions(FatalRunError):
    """Answers in a row were 200 but not chat completions: base_url points at something else."""

    error_class = "not_chat_completions"
    billed = True  # answered 200: whatever it was may have been billed


class SystematicFailure(FatalRunError):
    """The last conversations to finish all failed for the same reason: the run cannot succeed."""

    error_class = "systematic_failure"
    billed = True


class CapacityUnavailable(TransientError):
    """HTTP 429 "resource unavailable": flex processing has no capacity right now.

    Not a rate limit (the limiter must not slow down for it) and never billed; retried with
    backoff, and after ``provider.flex_fallback_after_s`` it may go out at the default tier.
    """

    error_class = "capacity_unavailable"
    billed = False  # OpenAI: "you will not be charged"


class UnsupportedParameter(FatalRunError):
    """HTTP 400 unsupported_parameter / unsupported_value: the model refuses a parameter or a
    value that m2l sends on every request, so no request can succeed until the config changes
    (unless it is one m2l can adapt once, like the name of the token cap)."""

    error_class = "unsupported_parameter"
    billed = False  # refused before generating anything

    def __init__(self, message: str, *, param: str, code: str, status: int | None = 400) -> None:
        super().__init__(message, status=status)
        self.param = param
        self.code = code


def request_error_classes() -> dict[str, type[RequestError]]:
    """Every request error class by its stored ``error_class`` name (RequestError included)."""
    out: dict[str, type[RequestError]] = {}
    todo: list[type[RequestError]] = [RequestError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.error_class, cls)
        todo.extend(cls.__subclasses__())
    return out
