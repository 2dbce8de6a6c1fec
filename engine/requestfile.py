"""One line of a request file (``m2l requests``): read, checked and counted; and its result line.

A line is an OpenAI chat-completions body, with an optional ``metadata`` value that is passed
through to the result and never sent; or a Batch API line (``custom_id``, ``method``, ``url``,
``body``), whose ``custom_id`` is passed through. The body goes out as it is (its ``model``
filled in when it names none, its token cap added when it sets none); its messages are counted
here once, so the limiter and the budget can charge it. Everything is pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from engine.chat import TOKENS_PER_MESSAGE, ChatRequest, ChatResult, Message
from engine.errors import RequestError

__all__ = [
    "IMAGE_TOKENS",
    "ByteBound",
    "Counter",
    "LineError",
    "RequestLine",
    "error_line",
    "ok_line",
    "parse_line",
    "request_key",
]

# An image part counts as one high-detail 512 px tile (85 + 170 tokens) times three: a charge
# that errs high, so the limiter and the budget never count an image as nothing.
IMAGE_TOKENS = 765
_CAPS = ("max_completion_tokens", "max_tokens")
_BATCH_KEYS = frozenset({"custom_id", "method", "url", "body"})


class Counter(Protocol):
    """What counts a line's tokens: engine.tokens.TokenCounter, or ByteBound."""

    @property
    def encoding_name(self) -> str: ...

    def count(self, text: str) -> int: ...

    def message(self, role: str, content: str) -> Message: ...


class ByteBound:
    """Counts a text's UTF-8 bytes: never fewer than its tokens in any byte-level BPE (each
    token is at least one byte), for free. For lines whose exact count nothing uses."""

    encoding_name = "utf-8 bytes"

    def count(self, text: str) -> int:
        return len(text.encode("utf-8", "surrogatepass"))

    def message(self, role: str, content: str) -> Message:
        return Message(role, content, TOKENS_PER_MESSAGE + len(role) + self.count(content))


class LineError(ValueError):
    """A line that cannot be sent: its message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class RequestLine:
    """A checked line: its position, what it passes through, and the request to send."""

    index: int  # 0-based among the file's non-blank lines: the result's place in the output
    line_no: int  # 1-based line number in the file, for people
    model: str
    passthrough: Mapping[str, Any]  # "metadata" and/or "custom_id", copied into the result
    request: ChatRequest


def request_key(index: int) -> str:
    """The request-log key of a line's requests (``index:0``: one step per line)."""
    return f"{index}:0"


def parse_line(
    raw: bytes,
    *,
    index: int,
    line_no: int,
    default_model: str,
    default_max_tokens: int,
    counters: Callable[[str], Counter],
) -> RequestLine:
    """Read one non-blank line; ``counters`` gives the token counter of a model.

    Raises LineError saying what is wrong with the line.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LineError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise LineError(f"a line must be a JSON object (a request body), found {_kind(obj)}")
    passthrough: dict[str, Any] = {}
    if _BATCH_KEYS & obj.keys() and "body" in obj:
        # A Batch API input line: the body is inside, the custom_id comes back with the result.
        unknown = sorted(obj.keys() - _BATCH_KEYS)
        if unknown:
            raise LineError(f"unknown key {unknown[0]!r} in a Batch API line")
        url = obj.get("url", "/v1/chat/completions")
        if url not in ("/v1/chat/completions", "/chat/completions"):
            raise LineError(f"url {url!r}: only /v1/chat/completions requests can be sent")
        if "custom_id" in obj:
            passthrough["custom_id"] = obj["custom_id"]
        body = obj["body"]
        if not isinstance(body, dict):
            raise LineError(f"body must be a JSON object, found {_kind(body)}")
        body = dict(body)
    else:
        body = obj
    if "metadata" in body:
        passthrough["metadata"] = body.pop("metadata")
    model = body.setdefault("model", default_model)
    if not isinstance(model, str) or not model.strip():
        raise LineError(f"model must name a model, found {_show(model)}")
    if body.get("stream"):
        raise LineError("stream = true is not supported: remove it (results come whole)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise LineError(
            'the body has no messages: each line needs "messages": [{"role": ..., '
            '"content": ...}, ...]'
        )
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise LineError(f"n must be a whole number of 1 or more, found {_show(n)}")
    cap = _token_cap(body, default_max_tokens)
    counter = counters(model)
    counted = tuple(_message(m, i, counter) for i, m in enumerate(messages))
    extra = _extra_tokens(body, counter)
    if extra:
        # Tool and schema definitions are prompt tokens too: counted as one more message.
        counted += (Message("system", "", extra),)
    request = ChatRequest(counted, max_tokens=cap * n, key=request_key(index), raw=body)
    return RequestLine(index, line_no, model, passthrough, request)


def _token_cap(body: dict[str, Any], default: int) -> int:
    """The body's token cap; the default is added (as ``max_tokens``) when it sets none."""
    for name in _CAPS:
        if name in body:
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LineError(f"{name} must be a whole number of 1 or more, found {_show(value)}")
            return value
    body["max_tokens"] = default
    return default


# System (and developer) messages are usually the same on every line of a file: their counts
# are kept, so each distinct one is counted once. User messages differ, and are not kept.
_REPEATED_ROLES = frozenset({"system", "developer"})
_KEPT_MAX = 1024
_kept: dict[tuple[str, str, str], Message] = {}


def _message(message: object, i: int, counter: Counter) -> Message:
    if isinstance(message, dict) and message.get("role") in _REPEATED_ROLES:
        content = message.get("content")
        if isinstance(content, str) and len(message) == 2:
            key = (counter.encoding_name, message["role"], content)
            kept = _kept.get(key)
            if kept is None:
                if len(_kept) >= _KEPT_MAX:
                    _kept.clear()
                kept = _kept[key] = _count_message(message, i, counter)
            return kept
    return _count_message(message, i, counter)


def _count_message(message: object, i: int, counter: Counter) -> Message:
    if not isinstance(message, dict):
        raise LineError(f"messages[{i}] must be an object with role and content")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise LineError(f"messages[{i}] has no role (system, user, assistant, tool, ...)")
    content = message.get("content")
    text, images = _content_text(content, i, role, has_calls="tool_calls" in message)
    counted = counter.message(role, text)
    extra = images * IMAGE_TOKENS
    for key in ("tool_calls", "function_call", "name"):
        if key in message:
            extra += counter.count(orjson.dumps(message[key]).decode())
    if extra:
        counted = Message(counted.role, counted.content, counted.tokens + extra)
    return counted


def _content_text(content: object, i: int, role: str, *, has_calls: bool) -> tuple[str, int]:
    """(the text a message's content counts as, its number of image parts)."""
    if isinstance(content, str):
        return content, 0
    if content is None and (has_calls or role == "assistant"):
        return "", 0
    if isinstance(content, list):
        texts, images = [], 0
        for part in content:
            if not isinstance(part, dict):
                raise LineError(f"messages[{i}].content parts must be objects")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") in ("image_url", "input_image", "image"):
                images += 1
            else:
                texts.append(orjson.dumps(part).decode())  # audio, files: counted as their JSON
        return "\n".join(texts), images
    raise LineError(f"messages[{i}] has no content (a string, or a list of parts)")


def _extra_tokens(body: Mapping[str, Any], counter: Counter) -> int:
    total = 0
    for key in ("tools", "functions", "response_format"):
        if key in body:
            total += counter.count(orjson.dumps(body[key]).decode())
    return total


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _show(value: object) -> str:
    text = orjson.dumps(value).decode() if _jsonable(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonable(value: object) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


# --- result lines ------------------------------------------------------------------------------


def ok_line(line: RequestLine, result: ChatResult) -> bytes:
    """The output line of an answered request: the whole reply object (redacted by the client)."""
    response = result.response
    if response is None:  # a completer that does not keep the reply object (a test fake)
        response = {
            "model": result.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.content},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "total_tokens": result.usage.total_tokens,
            },
        }
    return orjson.dumps(
        {
            "line": line.line_no,
            **line.passthrough,
            "response": response,
            "error": None,
            "cost_usd": round(result.cost_usd, 9),
        }
    )


def error_line(line: RequestLine, error: RequestError) -> bytes:
    """The output line of a request that failed for good: its error class, status and message
    (messages come from the client, which has masked any secret in them)."""
    return orjson.dumps(
        {
            "line": line.line_no,
            **line.passthrough,
            "response": None,
            "error": {
                "class": error.error_class,
                "status": error.status,
                "message": str(error),
            },
            "cost_usd": 0.0,
        }
    )
