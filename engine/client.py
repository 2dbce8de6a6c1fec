"""The HTTP client for OpenAI-compatible chat completions, and the one place errors are translated.

One aiohttp session with a sized pool; bodies encoded with orjson; every transport and HTTP
failure becomes one of m2l's own errors here, so nothing above this module sees aiohttp.
"""

from __future__ import annotations

import asyncio
import errno
import re
import time
import urllib.parse
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from engine.chat import ChatRequest, ChatResult, Delivery, Usage
from engine.config import ProviderConfig, Secret
from engine.errors import (
    AuthenticationFailed,
    CapacityUnavailable,
    ConnectFailed,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    ContentFiltered,
    ContextLengthExceeded,
    HostNotFound,
    MalformedResponse,
    ModelNotFound,
    PermanentRequestError,
    PermissionDenied,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
    UnsupportedParameter,
)
from engine.headers import RateLimitSnapshot, parse_retry_after
from engine.redact import Redactor, scrub
from engine.requestshape import RequestShape

__all__ = ["ChatClient", "scrub"]

# OpenAI's wording when the code field is missing (some proxies drop it): "Unsupported
# parameter: 'max_tokens' ...", "Unsupported value: 'temperature' ...", and older servers'
# "Unrecognized request argument supplied: prompt_cache_key".
_UNSUPPORTED = re.compile(
    r"^(?:Unsupported (?P<kind>parameter|value): '(?P<param>[^']+)'"
    r"|Unrecognized request arguments? supplied: (?P<arg>[\w.]+))"
)


class ChatClient:
    """Sends chat requests to one OpenAI-compatible endpoint.

    Every text taken from a response (reply, error body, malformed-body snippet, transport error)
    passes through a ``Redactor`` here, so a server that echoes the key cannot leak it further.
    """

    def __init__(
        self,
        provider: ProviderConfig,
        *,
        base_url: str,
        api_key: Secret | None,
        shape: RequestShape | None = None,
    ) -> None:
        self._provider = provider
        self._shape = shape
        self._api_key = api_key
        self._redact = Redactor(api_key)
        self._url = base_url.rstrip("/") + "/chat/completions"
        parsed = urllib.parse.urlsplit(base_url)
        self._host = parsed.hostname or base_url
        # How messages name the endpoint: scheme, host, port and path, never a query string or
        # user info (either may carry a key).
        netloc = parsed.netloc.rpartition("@")[2]
        self._where = self._redact.text(
            f"{parsed.scheme}://{netloc}{parsed.path.rstrip('/')}/chat/completions"
        )
        self._model = provider.model
        headers = {"Content-Type": "application/json", "User-Agent": "m2l/0.1"}
        headers.update(provider.headers)
        if api_key is not None:
            headers.update(provider.key_headers(base_url, api_key))
        self._headers = headers
        self._params = dict(provider.query) or None
        self._timeout = aiohttp.ClientTimeout(
            total=provider.total_timeout,
            connect=provider.connect_timeout_s,
            sock_read=provider.read_timeout,
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChatClient:
        connector = aiohttp.TCPConnector(
            limit=self._provider.pool_size, limit_per_host=self._provider.pool_size
        )
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_mark_written)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            json_serialize=_dumps_str,
            trace_configs=[trace],
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

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult:
        """Send one request; raises a RequestError subclass on any failure.

        ``delivery.written`` tells afterwards (even after a cancellation) whether the request
        reached the wire.
        """
        session = self._session
        if session is None:
            raise RuntimeError("ChatClient used outside its 'async with' block")
        data = orjson.dumps(self.request_body(request))
        started = time.monotonic()
        if delivery is not None:
            delivery.written = False
        try:
            async with session.post(
                self._url,
                data=data,
                headers=self._headers,
                params=self._params,
                trace_request_ctx=delivery,
            ) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except aiohttp.ConnectionTimeoutError:
            # The connection never opened: the request was not written, nothing was billed.
            raise ConnectTimeout(
                f"could not connect to {self._where} within provider.connect_timeout_s "
                f"({self._provider.connect_timeout_s:g} s)"
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise RequestTimeout(
                self._redact.text(f"no complete answer from {self._where} in time ({exc})")
            ) from None
        except aiohttp.ClientConnectorDNSError:
            raise HostNotFound(
                f"the host {self._host!r} of provider.base_url does not resolve (DNS lookup "
                "failed); check the host name for a typo"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            if exc.os_error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise ConnectionRefused(
                    f"cannot connect to {self._where}: {exc.strerror}"
                ) from None
            raise ConnectFailed(
                self._redact.text(f"cannot connect to {self._where}: {exc}")
            ) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise ConnectionLost(
                self._redact.text(f"connection to {self._where} broke mid-response: {exc}")
            ) from None
        except aiohttp.ClientError as exc:
            raise ConnectionLost(
                self._redact.text(f"request to {self._where} failed: {exc}")
            ) from None
        latency = time.monotonic() - started
        snapshot = RateLimitSnapshot.from_headers(headers)
        if status != 200:
            raise self._http_error(status, raw, headers, snapshot)
        return self._result(raw, snapshot, latency, whole=request.raw is not None)

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``; a Batch API line carries this same body."""
        shape = self._shape
        if shape is None or request.raw is not None:
            return request.body(self._model)  # a caller's own body goes as it is
        return shape.body(request)

    def read_reply(self, status: int, raw: bytes, latency: float = 0.0) -> ChatResult:
        """A reply that came another way (a Batch API output line) read as an online one.

        Raises the RequestError the online path raises for the same status and body.
        """
        snapshot = RateLimitSnapshot.from_headers({})
        if status != 200:
            raise self._http_error(status, raw, {}, snapshot)
        return self._result(raw, snapshot, latency)

    def _result(
        self, raw: bytes, snapshot: RateLimitSnapshot, latency: float, *, whole: bool = False
    ) -> ChatResult:
        """The reply read from a 200 body; ``whole`` keeps the whole reply object, with the key
        and key-shaped strings masked in every string of it (a server may echo the request)."""
        try:
            masked = whole and self._redact.may_hold_secret(raw)
            body = orjson.loads(self._redact.content(raw.decode("utf-8")) if masked else raw)
            choice = body["choices"][0]
            content = choice["message"].get("content") or ""
            if not isinstance(content, str):
                raise TypeError(f"message.content is {type(content).__name__}, not a string")
            finish = str(choice.get("finish_reason") or "stop")
            usage = body.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            completion_details = usage.get("completion_tokens_details") or {}
            tier = body.get("service_tier")
            result_usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                cached_tokens=int(details.get("cached_tokens") or 0),
                reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
                service_tier=tier if isinstance(tier, str) else None,
            )
            model = str(body.get("model", self._model))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            preview = raw[:120].decode("utf-8", "replace")
            raise MalformedResponse(
                self._redact.text(
                    f"the server's reply is not an OpenAI chat completion "
                    f"({type(exc).__name__}: {exc}); it began {preview!r}"
                ),
                status=200,
            ) from None
        if finish == "content_filter":
            raise ContentFiltered("the provider's content filter stopped the reply")
        if not whole or masked:
            # A whole reply with neither the key nor a key-shaped prefix in it has nothing to
            # mask: the three passes below are skipped (they are a tenth of a request's CPU).
            content = self._redact.content(content)
            finish, model = self._redact.text(finish), self._redact.text(model)
        return ChatResult(
            content,
            finish,
            result_usage,
            model,
            snapshot,
            latency,
            response=body if whole and isinstance(body, dict) else None,
        )

    def _http_error(
        self, status: int, raw: bytes, headers: Mapping[str, str], snapshot: RateLimitSnapshot
    ) -> RequestError:
        error = _error_object(raw)
        message = self._redact.text(
            str(error.get("message") or raw[:200].decode("utf-8", "replace"))
        )
        code = self._redact.text(str(error.get("code") or ""))
        kind = self._redact.text(str(error.get("type") or ""))
        if status == 429 and (
            code == "resource_unavailable" or "resource unavailable" in message.lower()
        ):
            # Flex processing out of capacity: not charged, and not our rate limit.
            return CapacityUnavailable(
                f"flex capacity unavailable (429): {message}",
                status=status,
                retry_after=parse_retry_after(headers),
            )
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
                f"not found (404) at {self._where} for model {self._model!r}: {message}. Check "
                "provider.model and provider.base_url",
                status=status,
            )
        if status in (400, 413, 422):
            if code == "context_length_exceeded" or "context length" in message.lower():
                return ContextLengthExceeded(message, status=status)
            if code in ("content_filter", "content_policy_violation"):
                return ContentFiltered(message, status=status)
            unsupported = _unsupported(code, error.get("param"), message)
            if unsupported is not None:
                param, what = unsupported
                return UnsupportedParameter(message, param=param, code=what, status=status)
            return PermanentRequestError(f"bad request ({status}): {message}", status=status)
        if status >= 500 or status in (408, 409):
            return ServerError(
                f"server error {status}: {message}",
                status=status,
                retry_after=parse_retry_after(headers),
            )
        return PermanentRequestError(f"unexpected HTTP {status}: {message}", status=status)


def _unsupported(code: str, param: object, message: str) -> tuple[str, str] | None:
    """(parameter, code) of a 400 refusing a parameter or value, or None for any other 400."""
    match = _UNSUPPORTED.match(message)
    if code in ("unsupported_parameter", "unsupported_value") and isinstance(param, str) and param:
        return param, code
    if match is None:
        return None
    if match.group("arg"):
        return match.group("arg"), "unsupported_parameter"
    return match.group("param"), f"unsupported_{match.group('kind')}"


def _error_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return {}


async def _mark_written(
    session: aiohttp.ClientSession,
    context: Any,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    """aiohttp trace hook: the request's headers are on the wire, so it may be billed."""
    delivery = context.trace_request_ctx
    if isinstance(delivery, Delivery):
        delivery.written = True


def _dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()
