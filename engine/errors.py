"""m2l's exception hierarchy: small, flat, grouped by what the caller must do.

Third-party errors (aiohttp, DuckDB, TOML) are translated into these once, at the boundary
where they happen, so the rest of the engine only ever reasons about these classes.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BudgetExhausted",
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

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def error_class(self) -> str:
        """A short stable name for logs and the request table, e.g. ``server_error``."""
        name = type(self).__name__
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class TransientError(RequestError):
    """Worth retrying after a backoff: the same request may well succeed."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ServerError(TransientError):
    """The server answered 5xx."""


class RequestTimeout(TransientError):
    """Connecting or reading took longer than the configured timeout."""


class ConnectionLost(TransientError):
    """The connection was reset or closed before the whole response arrived."""


class ConnectFailed(TransientError):
    """No connection was made, so the request never left this machine and cost nothing.

    Not one of the request's attempts: the run waits for the server (with backoff) up to
    ``retry.unreachable_s`` before it stops with ServerUnreachable.
    """


class ConnectionRefused(ConnectFailed):
    """Nothing listens at the base URL (or the host is unreachable)."""


class ConnectTimeout(ConnectFailed):
    """The connection could not be opened within ``provider.connect_timeout_s``."""


class HostNotFound(ConnectFailed):
    """The base URL's host name does not resolve (fatal at once if it never resolved)."""


class MalformedResponse(TransientError):
    """The body was not the JSON shape an OpenAI-compatible server returns."""


class RateLimited(RequestError):
    """HTTP 429: the provider's rate limit was hit; the limiter pauses everyone until reset."""

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


class ContextLengthExceeded(PermanentRequestError):
    """The prompt plus max_tokens is longer than the model's context window."""


class ContentFiltered(PermanentRequestError):
    """The provider's content filter refused the prompt or the reply."""


class OversizeRequest(PermanentRequestError):
    """The request's token charge is larger than the whole token bucket: it could never be sent."""


class FatalRunError(RequestError):
    """Nothing will succeed until the user fixes something; the run stops early."""


class AuthenticationFailed(FatalRunError):
    """HTTP 401: the API key is missing or wrong."""


class PermissionDenied(FatalRunError):
    """HTTP 403: the key may not use this model or endpoint."""


class ModelNotFound(FatalRunError):
    """HTTP 404: the model (or the endpoint) does not exist at this base URL."""


class ServerUnreachable(FatalRunError):
    """The server could not be reached for ``retry.unreachable_s``, or its host never resolved."""


class NotChatCompletions(FatalRunError):
    """Answers in a row were 200 but not chat completions: base_url points at something else."""


class SystematicFailure(FatalRunError):
    """The last conversations to finish all failed for the same reason: the run cannot succeed."""
