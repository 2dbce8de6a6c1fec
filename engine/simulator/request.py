"""Reading a ``POST /v1/chat/completions`` body into a typed request, or OpenAI's 400 error.

``parse_request`` returns an ``ApiError`` (never raises) for a body OpenAI would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from engine.simulator.faults import body_key
from engine.simulator.wire import ApiError, bad_request

__all__ = ["SimRequest", "parse_request"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent "
    "was not valid JSON.)"
)


@dataclass(frozen=True, slots=True)
class SimRequest:
    """The parts of a chat completion body the simulator acts on, plus its body key."""

    model: str
    messages: tuple[tuple[str, str], ...]  # (role, text content)
    max_tokens: int | None  # max_completion_tokens or max_tokens, None when absent
    seed: int | None
    stream: bool
    include_usage: bool
    json_mode: bool
    json_schema: Mapping[str, Any] | None
    key: bytes  # see faults.body_key
    token_param: str | None = None  # "max_completion_tokens" | "max_tokens" | None
    temperature: float | None = None
    top_p: float | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    params: frozenset[str] = frozenset()  # every top-level key of the body


def _type_name(value: object) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), "null")


def _content_text(content: object) -> str | None:
    """A message's text: a string, or the text parts of a content array joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                return None
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
        return "\n".join(parts)
    return None


def _positive_int(body: Mapping[str, Any], name: str) -> int | ApiError | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return bad_request(
            f"Invalid type for '{name}': expected an integer, but got {_type_name(value)} instead.",
            param=name,
            code="invalid_type",
        )
    if value < 1:
        return bad_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
            f"but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    return value


def _messages(body: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | ApiError:
    raw = body.get("messages")
    if raw is None:
        return bad_request(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(raw, list):
        return bad_request(
            f"Invalid type for 'messages': expected an array of objects, but got "
            f"{_type_name(raw)} instead.",
            param="messages",
            code="invalid_type",
        )
    if not raw:
        return bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    out: list[tuple[str, str]] = []
    for i, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:
            return bad_request(
                f"Invalid value for 'messages[{i}].role': expected one of {sorted(_ROLES)}.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        text = _content_text(message.get("content"))
        if text is None:
            return bad_request(
                f"Invalid type for 'messages[{i}].content': expected a string or an array of "
                "content parts.",
                param=f"messages[{i}].content",
                code="invalid_type",
            )
        out.append((role, text))
    return tuple(out)


def _response_format(body: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any] | None] | ApiError:
    fmt = body.get("response_format")
    if fmt is None:
        return False, None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return True, schema if isinstance(schema, dict) else None
    return bad_request(
        "Invalid value for 'response_format.type': expected 'text', 'json_object' or "
        "'json_schema'.",
        param="response_format",
        code="invalid_value",
    )


def parse_request(raw: bytes) -> SimRequest | ApiError:
    """The request in ``raw``, or the 400 error OpenAI would answer it with."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return bad_request(_NOT_JSON)
    if not isinstance(body, dict):
        return bad_request(_NOT_JSON)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return bad_request("you must provide a model parameter", param="model")
    messages = _messages(body)
    if isinstance(messages, ApiError):
        return messages
    token_param: str | None = "max_completion_tokens"
    max_tokens = _positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        token_param = "max_tokens" if body.get("max_tokens") is not None else None
        max_tokens = _positive_int(body, "max_tokens")
    if isinstance(max_tokens, ApiError):
        return max_tokens
    sampling = _sampling(body)
    if isinstance(sampling, ApiError):
        return sampling
    strings = _strings(body, ("reasoning_effort", "service_tier", "prompt_cache_key"))
    if isinstance(strings, ApiError):
        return strings
    n = body.get("n")
    if n is not None and n != 1:
        return bad_request(
            "The m2l simulator answers one choice per request; send n=1 or leave n out.",
            param="n",
            code="invalid_value",
        )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return bad_request(
            f"Invalid type for 'seed': expected an integer, but got {_type_name(seed)} instead.",
            param="seed",
            code="invalid_type",
        )
    fmt = _response_format(body)
    if isinstance(fmt, ApiError):
        return fmt
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return SimRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        json_mode=fmt[0],
        json_schema=fmt[1],
        key=body_key(model, messages, max_tokens, seed),
        token_param=token_param,
        temperature=sampling[0],
        top_p=sampling[1],
        reasoning_effort=strings[0],
        service_tier=strings[1],
        prompt_cache_key=strings[2],
        params=frozenset(body),
    )


def _sampling(body: Mapping[str, Any]) -> tuple[float | None, float | None] | ApiError:
    out: list[float | None] = []
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return bad_request(
                f"Invalid type for '{name}': expected a decimal, but got {_type_name(value)} "
                "instead.",
                param=name,
                code="invalid_type",
            )
        out.append(None if value is None else float(value))
    return out[0], out[1]


def _strings(body: Mapping[str, Any], names: tuple[str, ...]) -> list[str | None] | ApiError:
    out: list[str | None] = []
    for name in names:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            return bad_request(
                f"Invalid type for '{name}': expected a string, but got {_type_name(value)} "
                "instead.",
                param=name,
                code="invalid_type",
            )
        out.append(value)
    return out
