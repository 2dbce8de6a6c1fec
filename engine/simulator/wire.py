"""OpenAI's wire shapes: error bodies, completions, stream chunks and the model list.

Bodies follow what api.openai.com returns (field names, types, nulls), so that the official
client and m2l's own client parse them exactly as they parse OpenAI's. Nothing here raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from engine.headers import format_duration

__all__ = [
    "ApiError",
    "bad_request",
    "chunk",
    "completion",
    "context_length_error",
    "flex_unavailable_error",
    "invalid_api_key",
    "missing_api_key",
    "model_list",
    "model_not_found",
    "rate_limit_error",
    "server_error",
    "sse",
    "unavailable_error",
    "unsupported_parameter",
    "unsupported_value",
    "usage",
]

SYSTEM_FINGERPRINT = "fp_m2l_sim"
_RATE_LIMIT_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."
_UNIT_NAMES = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error response: HTTP status, OpenAI's ``{"error": {...}}`` body, and a short kind."""

    status: int
    message: str
    type: str
    kind: str  # for /stats: "invalid_request", "context_length_exceeded", "rate_limit" ...
    param: str | None = None
    code: str | None = None

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", "invalid_request", param, code)


def unsupported_parameter(param: str, hint: str) -> ApiError:
    """OpenAI's 400 for a parameter the model does not take (``hint``: " Use 'x' instead.")."""
    return ApiError(
        400,
        f"Unsupported parameter: '{param}' is not supported with this model.{hint}",
        "invalid_request_error",
        "unsupported_parameter",
        param,
        "unsupported_parameter",
    )


def unsupported_value(param: str, shown: str, detail: str) -> ApiError:
    """OpenAI's 400 for a value the model does not take, e.g. temperature 0.7 on o3."""
    return ApiError(
        400,
        f"Unsupported value: '{param}' does not support {shown} with this model. {detail}",
        "invalid_request_error",
        "unsupported_value",
        param,
        "unsupported_value",
    )


def flex_unavailable_error() -> ApiError:
    """The 429 a flex request gets when flex capacity is short: not charged, not a rate limit."""
    return ApiError(
        429,
        "Resource Unavailable: there is not enough flex processing capacity for this request "
        "right now. Please try again later, or send it with service_tier 'default'.",
        "resource_unavailable",
        "flex_unavailable",
        code="resource_unavailable",
    )


def context_length_error(window: int, prompt: int, completion: int | None) -> ApiError:
    """OpenAI's 400 for prompt + max_tokens beyond the window (completion None: not given)."""
    if completion is None:
        message = (
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {prompt} tokens. Please reduce the length of the messages."
        )
    else:
        message = (
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the "
            "completion). Please reduce the length of the messages or completion."
        )
    return ApiError(
        400, message, "invalid_request_error", "context_length_exceeded", "messages",
        "context_length_exceeded",
    )  # fmt: skip


def missing_api_key() -> ApiError:
    return ApiError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "invalid_request_error",
        "unauthorized",
    )


def invalid_api_key() -> ApiError:
    # OpenAI echoes a masked key here; the simulator echoes none (keys never go into messages).
    return ApiError(
        401,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "unauthorized",
        code="invalid_api_key",
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        code="model_not_found",
    )


def rate_limit_error(
    kind: str, model: str, limit: int, used: int, requested: int, wait_s: float, capacity: float
) -> ApiError:
    """OpenAI's 429 body; ``kind`` is "requests" or "tokens" (also the error ``type``)."""
    unit = _UNIT_NAMES.get(kind, kind)
    if requested > capacity:
        message = (
            f"Request too large for {model} in organization org-m2lsim on {unit}: "
            f"Limit {limit}, Requested {requested}. The input or output tokens must be reduced "
            f"in order to run successfully. {_RATE_LIMIT_DOCS}"
        )
    else:
        message = (
            f"Rate limit reached for {model} in organization org-m2lsim on {unit}: "
            f"Limit {limit}, Used {used}, Requested {requested}. "
            f"Please try again in {_wait_text(wait_s)}. {_RATE_LIMIT_DOCS}"
        )
    return ApiError(429, message, kind, "rate_limit", code="rate_limit_exceeded")


def _wait_text(seconds: float) -> str:
    # OpenAI writes "120ms" below a second and "1.5s" / "6m0s" above, as its reset headers do.
    return format_duration(seconds if math.isfinite(seconds) else 0.0)


def server_error() -> ApiError:
    return ApiError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        "server_error",
    )


def unavailable_error() -> ApiError:
    return ApiError(
        503,
        "The server is overloaded or not ready yet.",
        "server_error",
        "unavailable",
    )


def usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, reasoning_tokens: int = 0
) -> dict[str, Any]:
    """OpenAI's usage object; reasoning tokens are part of ``completion_tokens``, cached ones
    part of ``prompt_tokens``."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion(
    completion_id: str,
    created: int,
    model: str,
    content: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    service_tier: str = "default",
) -> bytes:
    """A non-streaming ``chat.completion`` body."""
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens),
            "service_tier": service_tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def chunk(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    *,
    with_usage_field: bool = False,
    usage_value: dict[str, Any] | None = None,
    service_tier: str = "default",
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; ``delta`` None makes the usage-only chunk (no choices)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": service_tier,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage_field:
        # With include_usage every chunk carries "usage": null until the last one.
        body["usage"] = usage_value
    return body


def sse(event: dict[str, Any] | None) -> bytes:
    """One server-sent event; None is the final ``data: [DONE]``."""
    if event is None:
        return b"data: [DONE]\n\n"
    return b"data: " + orjson.dumps(event) + b"\n\n"


def model_list(models: tuple[str, ...]) -> bytes:
    return orjson.dumps({"object": "list", "data": [model_entry(m) for m in models]})


def model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "m2l-sim"}
