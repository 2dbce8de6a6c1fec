"""The Files and Batch API through the official ``openai`` SDK (async client), errors translated.

Only this module sees the SDK. Every failure becomes one of m2l's errors here: a key or a
permission the provider refuses is fatal for the run (AuthenticationFailed, PermissionDenied),
a refused request (400/404) is a FatalRunError naming what to fix, and anything that may pass
(a timeout, a lost connection, 429, 5xx) is a ServerError, tried again by the caller. Messages
are scrubbed of the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

if TYPE_CHECKING:
    import openai

from engine.client import scrub
from engine.config import Secret
from engine.errors import (
    AuthenticationFailed,
    FatalRunError,
    PermissionDenied,
    RequestError,
    ServerError,
)

__all__ = [
    "FINAL_STATUSES",
    "BatchAPI",
    "BatchGone",
    "BatchInfo",
    "OpenAIBatchAPI",
    "batch_endpoint",
]

FINAL_STATUSES: Final = frozenset({"completed", "failed", "expired", "cancelled"})
T = TypeVar("T")


class BatchGone(ServerError):
    """The provider no longer knows a batch (404): it will never complete."""


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What m2l reads from a batch object."""

    id: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    created_at: int
    metadata: Mapping[str, str]
    errors: str | None  # validation errors of a failed batch, as one line

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


class BatchAPI(Protocol):
    """The Files and Batch API calls batch mode makes (OpenAIBatchAPI, or a fake in tests)."""

    endpoint: str

    async def upload(self, filename: str, data: bytes) -> str: ...

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchInfo: ...

    async def retrieve(self, batch_id: str) -> BatchInfo: ...

    async def cancel(self, batch_id: str) -> BatchInfo: ...

    async def content(self, file_id: str) -> bytes: ...

    async def delete_file(self, file_id: str) -> None: ...

    async def find(self, metadata: Mapping[str, str], *, since: int) -> BatchInfo | None: ...


def batch_endpoint(base_url: str) -> str:
    """The endpoint batches are created on: Azure OpenAI names it without the /v1 prefix."""
    url = base_url.rstrip("/").lower()
    if ".azure.com" in url or url.endswith("/openai"):
        return "/chat/completions"
    return "/v1/chat/completions"


def _info(batch: Any) -> BatchInfo:
    counts = batch.request_counts
    errors = None
    if batch.errors is not None and batch.errors.data:
        errors = "; ".join(
            f"line {e.line}: {e.code}: {e.message}" if e.line else f"{e.code}: {e.message}"
            for e in batch.errors.data[:5]
        )
    return BatchInfo(
        id=batch.id,
        status=batch.status,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        total=counts.total if counts else 0,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        created_at=int(batch.created_at),
        metadata=dict(batch.metadata or {}),
        errors=errors,
    )


class OpenAIBatchAPI:
    """BatchAPI over ``openai.AsyncOpenAI``; ``query`` and ``headers`` reach every call (Azure's
    ``api-version`` and ``api-key``)."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Secret | None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        # Imported here, not with the module: the SDK takes about a second of CPU to import,
        # and only batch mode needs it (every `m2l run` imports this module).
        import openai

        self._openai = openai
        self._key = api_key
        extra = dict(headers or {})
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            # The simulator needs no key; the SDK insists on one.
            api_key=api_key.reveal() if api_key is not None else "sk-no-key",
            default_headers=extra or None,
            default_query=dict(query) if query else None,
            timeout=timeout_s,
            max_retries=2,
        )
        self.endpoint = batch_endpoint(base_url)

    async def aclose(self) -> None:
        await self._client.close()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except self._openai.APIStatusError as exc:
            raise self._translate(what, exc) from None
        except (self._openai.APIConnectionError, self._openai.APITimeoutError) as exc:
            raise ServerError(f"{what}: the provider could not be reached ({exc})") from None

    def _translate(self, what: str, exc: openai.APIStatusError) -> RequestError:
        message = scrub(f"{what}: HTTP {exc.status_code}: {exc.message}", self._key)
        status = exc.status_code
        if status == 401:
            return AuthenticationFailed(f"{message}; check the API key", status=status)
        if status == 403:
            return PermissionDenied(message, status=status)
        if status == 429 or status >= 500 or status in (408, 409):
            return ServerError(message, status=status)
        return FatalRunError(
            f"{message}; does this provider offer the Batch API at provider.base_url?",
            status=status,
        )

    async def upload(self, filename: str, data: bytes) -> str:
        file = await self._call(
            "uploading a batch input file",
            lambda: self._client.files.create(file=(filename, data), purpose="batch"),
        )
        return file.id

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        batch = await self._call(
            "creating a batch",
            lambda: self._client.batches.create(
                input_file_id=file_id,
                endpoint=self.endpoint,  # type: ignore[arg-type]  # Azure's name is not in the SDK's list
                completion_window="24h",
                metadata=dict(metadata),
            ),
        )
        return _info(batch)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch as it is now; raises BatchGone when the provider does not know it."""
        try:
            batch = await self._call(
                f"polling batch {batch_id}", lambda: self._client.batches.retrieve(batch_id)
            )
        except FatalRunError as exc:
            if exc.status == 404:
                raise BatchGone(str(exc), status=404) from None
            raise
        return _info(batch)

    async def cancel(self, batch_id: str) -> BatchInfo:
        batch = await self._call(
            f"cancelling batch {batch_id}", lambda: self._client.batches.cancel(batch_id)
        )
        return _info(batch)

    async def content(self, file_id: str) -> bytes:
        response = await self._call(
            f"downloading file {file_id}", lambda: self._client.files.content(file_id)
        )
        return response.content

    async def delete_file(self, file_id: str) -> None:
        await self._call(f"deleting file {file_id}", lambda: self._client.files.delete(file_id))

    async def find(self, metadata: Mapping[str, str], *, since: int) -> BatchInfo | None:
        """The newest batch whose metadata holds ``metadata``, among those created since
        ``since`` (unix seconds); the list is newest first, so the walk stops at older ones."""

        async def walk() -> BatchInfo | None:
            async for batch in self._client.batches.list(limit=100):
                if batch.created_at < since:
                    return None
                found = batch.metadata or {}
                if all(found.get(k) == v for k, v in metadata.items()):
                    return _info(batch)
            return None

        return await self._call("looking up batches", walk)
