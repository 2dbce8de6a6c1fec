"""Run health: the conditions under which the run as a whole cannot succeed, decided once.

A request error or a failed conversation is normally the business of that request or that
conversation. Some patterns say instead that nothing will succeed until the user fixes
something, and the run should stop within seconds with a message naming the cause and the fix:

- the base_url's host never resolved (a typo): fatal at once;
- the server cannot be reached (refused, connect timeout, no DNS after it once worked): waited
  for, with backoff, up to ``unreachable_s`` (a llama.cpp restart takes a few seconds), then
  fatal;
- ``malformed_before_fatal`` answers in a row (no good reply between) that were HTTP 200 but not
  a chat completion: base_url points at a web page or a proxy, not an OpenAI-compatible API;
- the same 400 for ``malformed_before_fatal`` requests in a row: every request will meet it;
- the last ``systematic_window`` conversations to finish all failed for the same reason (a
  model that never writes the language, a filter that rejects everything).

``RunHealth`` is pure (an injected clock, no I/O): the dispatcher reports each reply and request
error to it, the scheduler each finished conversation; whatever it returns is a FatalRunError
that the caller raises, which stops the run with exit 1. Any other code that finds a condition
no retry can change stops the run the same way: raise a FatalRunError subclass whose message
names the cause and the config key or action that fixes it.
"""

from __future__ import annotations

from collections import deque

from engine.clock import Clock, MonotonicClock
from engine.config import RetryConfig
from engine.errors import (
    ConnectFailed,
    ContentFiltered,
    ContextLengthExceeded,
    FatalRunError,
    HostNotFound,
    MalformedResponse,
    NotChatCompletions,
    PermanentRequestError,
    RequestError,
    ServerUnreachable,
    SystematicFailure,
)
from engine.reasons import reason_family

__all__ = ["RunHealth", "fix_hint"]

RESUME_FAILED = (
    "then run the same command with --retry-failed to try the failed conversations again"
)


# What to do about a conversation failure reason, by its error class (the text before ":").
_HINTS = {
    "wrong_language": "the model does not write the target language: use a model that does, "
    "or leave those languages out of the seeds",
    "refusal": "the model refuses the prompts: use another model, or check the prompts "
    "(m2l prompts show ID)",
    "content_filtered": "the provider's content filter refuses the prompts or replies",
    "context_length_exceeded": "the prompts are longer than the model's context window: lower "
    "generation.max_tokens or use a model with a longer context",
    "server_error": "the server fails every request: check its logs and its health",
    "request_timeout": "the server does not answer in time: check it, or raise "
    "provider.read_timeout_s",
    "connection_lost": "the server drops every connection: check it and provider.base_url",
    "malformed_response": "the server's replies are not chat completions: check provider.base_url",
    "permanent_request_error": "the server refuses the requests as sent: check provider.model "
    "and the generation settings",
    "rate_limited": "the provider keeps answering 429: lower limits.rpm / limits.tpm, or raise "
    "retry.rate_limit_patience",
}


def fix_hint(reason: str | None) -> str:
    """What a user can do about conversations failing for ``reason``."""
    text = (reason or "").strip()
    for name, hint in _HINTS.items():
        if text.startswith(name):
            return hint
    return "fix the cause named above"


class RunHealth:
    """Watches replies, request errors and finished conversations across the whole run."""

    __slots__ = (
        "_clock",
        "_failures",
        "_failures_reason",
        "_malformed",
        "_policy",
        "_reached",
        "_rejected",
        "_rejected_family",
        "_unreachable",
        "_unreachable_since",
        "_window",
    )

    def __init__(
        self,
        retry: RetryConfig | None = None,
        *,
        systematic_window: int = 20,
        clock: Clock | None = None,
    ) -> None:
        # The thresholds are the run's retry config as loaded (checked there): how long and how
        # many connection failures, and how many non-completions in a row, before the run stops.
        self._policy = retry or RetryConfig()
        self._window = max(systematic_window, 0)  # run.systematic_failure_window; 0: off
        self._clock = clock or MonotonicClock()
        self._reached = False  # the server answered at least once this session
        self._unreachable = 0
        self._unreachable_since: float | None = None
        self._malformed = 0
        self._rejected = 0
        self._rejected_family = ""
        self._failures: deque[str] = deque(maxlen=max(self._window, 1))
        self._failures_reason = ""

    def reply_ok(self) -> None:
        """A usable reply came back: every request-level streak starts again."""
        self._reached = True
        self._unreachable = 0
        self._unreachable_since = None
        self._malformed = 0
        self._rejected = 0

    def request_failed(self, error: RequestError) -> FatalRunError | None:
        """Count one failed attempt; the error that stops the run, or None to go on."""
        if isinstance(error, ConnectFailed):
            return self._not_reached(error)
        # Anything else came from the server: it is reachable.
        self._reached = True
        self._unreachable = 0
        self._unreachable_since = None
        if isinstance(error, MalformedResponse) and error.status == 200:
            self._malformed += 1
            if self._malformed >= self._policy.malformed_before_fatal:
                return NotChatCompletions(
                    f"{self._malformed} answers in a row were HTTP 200 but not a chat "
                    f"completion (last: {error}). provider.base_url must point at an "
                    "OpenAI-compatible API (its /v1 path), not a web page or a proxy's own "
                    "page; fix it and run the same command again to resume"
                )
        elif isinstance(error, PermanentRequestError) and not isinstance(
            error, ContextLengthExceeded | ContentFiltered
        ):
            family = reason_family(str(error))
            self._rejected = self._rejected + 1 if family == self._rejected_family else 1
            self._rejected_family = family
            if self._rejected >= self._policy.malformed_before_fatal:
                return FatalRunError(
                    f"{self._rejected} requests in a row were refused the same way ({error}); "
                    "no retry can change that. Fix the setting the message names (provider."
                    "model, provider.headers, provider.query or the generation settings), then "
                    "run the same command again to resume",
                    status=error.status,
                )
        return None

    def _not_reached(self, error: ConnectFailed) -> FatalRunError | None:
        if isinstance(error, HostNotFound) and not self._reached:
            # A name that never resolved is a typo, not an outage: waiting will not fix it.
            return ServerUnreachable(
                f"{error}; fix provider.base_url and run the same command again to resume"
            )
        now = self._clock.now()
        if self._unreachable_since is None:
            self._unreachable_since = now
        self._unreachable += 1
        waited = now - self._unreachable_since
        policy = self._policy
        if self._unreachable >= policy.refused_before_fatal and waited >= policy.unreachable_s:
            return ServerUnreachable(
                f"the server could not be reached for {waited:.0f} s ({self._unreachable} "
                f"connection attempts; last: {error}). Check that it is running and that "
                "provider.base_url points at it, then run the same command again to resume "
                "(retry.unreachable_s sets how long m2l waits for a server)"
            )
        return None

    @property
    def unreachable_for(self) -> float | None:
        """Seconds since the server was last reachable, while it is not; None when it is."""
        if self._unreachable_since is None:
            return None
        return self._clock.now() - self._unreachable_since

    def conversation_finished(self, ok: bool, reason: str | None) -> FatalRunError | None:
        """Count one final conversation (``ok``: done); SystematicFailure when the last
        ``systematic_window`` all failed for the same reason."""
        window = self._window
        if window == 0:
            return None
        if ok:
            self._failures.clear()
            return None
        self._failures.append(reason_family(reason))
        self._failures_reason = reason or "no reason recorded"
        if len(self._failures) < window or len(set(self._failures)) != 1:
            return None
        return SystematicFailure(
            f"the last {window} conversations to finish all failed for the same reason: "
            f"{self._failures_reason}. {fix_hint(reason)}; {RESUME_FAILED} "
            "(run.systematic_failure_window sets how many failures in a row stop a run; "
            "0 turns this check off)"
        )
