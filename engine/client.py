"""The HTTP client for OpenAI-compatible chat completions, and the one place errors are translated.

One aiohttp session with a sized pool; bodies encoded with orjson; every transport and HTTP
failure becomes one of m2l's own errors here, so nothing above this module sees aiohttp.
"""

from __future__ import annotations

import asyncio
import errno
import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from engine.chat import ChatRequest, ChatResult, Usage
from engine.config import ProviderConfig, Secret
from engine.errors import (
    AuthenticationFailed,
    ConnectionLost,
    ConnectionRefused,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    ModelNotFound,
    PermanentRequestError,
    PermissionDenied,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
)
from engine.headers import RateLimitSnapshot, parse_retry_after

__all__ = ["ChatClient", "scrub"]

_KEYLIKE = re.compile(r"(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-*]{8,}")


def scrub(text: str, secret: Secret | None = None) -> str:
    """Remove an API key (ours, or anything shaped like one) from text meant for people."""
    if secret is not None and secret.reveal():
        text = text.replace(secret.reveal(), "***")
    return _KEYLIKE.sub(r"\1***", text)


class ChatClient:
    """Sends chat requests to one OpenAI-compatible endpoint."""

    def __init__(self, provider: ProviderConfig, *, base_url: str, api_key: Secret | None) -> None:
        self._provider = provider
        self._api_key = api_key
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = provider.model
        headers = {"Content-Type": "application/json", "User-Agent": "m2l/0.1"}
        headers.update(provider.headers)
        if api_key is not None:
            if ".azure.com" in base_url:
                headers["api-key"] = api_key.reveal()  # Azure OpenAI's own header
            else:
                headers["Authorization"] = f"Bearer {api_key.reveal()}"
        self._headers = headers
        self._params = dict(provider.query) or None
        self._timeout = aiohttp.ClientTimeout(
            total=provider.total_timeout_s,
            connect=provider.connect_timeout_s,
            sock_read=provider.read_timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChatClient:
        connector = aiohttp.TCPConnector(
            limit=self._provider.pool_size, limit_per_host=self._provider.pool_size
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, json_serialize=_dumps_str
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await asyncio.shield(session.close())

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Send one request; raises a RequestError subclass on any failure."""
        session = self._session
        if session is None:
            raise RuntimeError("ChatClient used outside its 'async with' block")
        data = orjson.dumps(request.body(self._model))
        started = time.monotonic()
        try:
            async with session.post(
                self._url, data=data, headers=self._headers, params=self._params
            ) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise RequestTimeout(f"no complete answer from {self._url} in time ({exc})") from None
        except aiohttp.ClientConnectorError as exc:
            if exc.os_error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise ConnectionRefused(f"cannot connect to {self._url}: {exc.strerror}") from None
            raise ConnectionLost(f"cannot connect to {self._url}: {exc}") from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise ConnectionLost(f"connection to {self._url} broke mid-response: {exc}") from None
        except aiohttp.ClientError as exc:
            raise ConnectionLost(f"request to {self._url} failed: {exc}") from None
        latency = time.monotonic() - started
        snapshot = RateLimitSnapshot.from_headers(headers)
        if status != 200:
            raise self._http_error(status, raw, headers, snapshot)
        return self._result(raw, snapshot, latency)

    def _result(self, raw: bytes, snapshot: RateLimitSnapshot, latency: float) -> ChatResult:
        try:
            body = orjson.loads(raw)
            choice = body["choices"][0]
            content = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
            usage = body.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            result_usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                cached_tokens=int(details.get("cached_tokens") or 0),
            )
            model = str(body.get("model", self._model))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            preview = raw[:120].decode("utf-8", "replace")
            raise MalformedResponse(
                f"the server's reply is not an OpenAI chat completion ({type(exc).__name__}: "
                f"{exc}); it began {preview!r}"
            ) from None
        if finish == "content_filter":
            raise ContentFiltered("the provider's content filter stopped the reply")
        return ChatResult(content, finish, result_usage, model, snapshot, latency)

    def _http_error(
        self, status: int, raw: bytes, headers: Mapping[str, str], snapshot: RateLimitSnapshot
    ) -> RequestError:
        error = _error_object(raw)
        message = scrub(
            str(error.get("message") or raw[:200].decode("utf-8", "replace")), self._api_key
        )
        code = str(error.get("code") or "")
        kind = str(error.get("type") or "")
        if status == 429:
            limit_kind = kind if kind in ("requests", "tokens") else None
            if code == "insufficient_quota":
                # Out of credit is not a rate limit: waiting will not help.
                return PermissionDenied(
                    f"the provider says the account has no quota left: {message}", status=status
                )
            return RateLimited(
                f"rate limited ({limit_kind or 'unspecified'}): {message}",
                retry_after=parse_retry_after(headers),
                limit_kind=limit_kind,
                ratelimit=snapshot,
            )
        if status == 401:
            return AuthenticationFailed(
                f"the provider rejected the API key (401): {message}. Check the environment "
                f"variable named by provider.api_key_env ({self._provider.api_key_env})",
                status=status,
            )
        if status == 403:
            return PermissionDenied(f"access denied (403): {message}", status=status)
        if status == 404:
            return ModelNotFound(
                f"not found (404) at {self._url} for model {self._model!r}: {message}. Check "
                "provider.model and provider.base_url",
                status=status,
            )
        if status in (400, 413, 422):
            if code == "context_length_exceeded" or "context length" in message.lower():
                return ContextLengthExceeded(message, status=status)
            if code in ("content_filter", "content_policy_violation"):
                return ContentFiltered(message, status=status)
            return PermanentRequestError(f"bad request ({status}): {message}", status=status)
        if status >= 500 or status in (408, 409):
            return ServerError(
                f"server error {status}: {message}",
                status=status,
                retry_after=parse_retry_after(headers),
            )
        return PermanentRequestError(f"unexpected HTTP {status}: {message}", status=status)


def _error_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return {}


def _dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()
