"""How a chat request goes out to this provider and model, and the one-time adaptations a
server's 400 may ask for.

``RequestShape.body`` writes the JSON body: the token cap under the name the server takes
(``max_completion_tokens`` or ``max_tokens``), sampling settings only where the model accepts
them, ``reasoning_effort`` per step for reasoning models, ``service_tier`` and a per-conversation
``prompt_cache_key``. ``adapt`` handles a 400 that names a parameter m2l chose by itself ("auto"):
the token cap's name switches once, an unwanted ``prompt_cache_key`` is dropped once; any other
refusal is fatal, and ``explain`` names the parameter and the config key that sets it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from engine.capabilities import Capabilities
from engine.chat import ChatRequest
from engine.config import ProviderConfig
from engine.errors import UnsupportedParameter
from engine.modelprofile import ModelProfile
from engine.records import step_kind
from state.requestlog import parse_request_key

__all__ = ["Adapted", "RequestShape", "ShapeSettings", "hosted_by_openai"]

TokenParam = Literal["max_tokens", "max_completion_tokens"]
_OTHER: dict[str, TokenParam] = {
    "max_tokens": "max_completion_tokens",
    "max_completion_tokens": "max_tokens",
}


def hosted_by_openai(base_url: str) -> bool:
    """Whether ``base_url`` is OpenAI's API or an Azure OpenAI resource."""
    host = (urlsplit(base_url).hostname or "").lower()
    return host == "api.openai.com" or host.endswith((".openai.azure.com", ".azure.com"))


@dataclass(frozen=True, slots=True)
class ShapeSettings:
    """Everything the body depends on, resolved once from the config and the model's row."""

    model: str
    caps: Capabilities
    token_param: TokenParam
    token_param_auto: bool  # may switch once on a 400 naming it
    efforts: dict[str, str | None]  # step kind → reasoning_effort (None: not sent)
    service_tier: str | None
    cache_key: bool
    cache_key_auto: bool  # may be dropped once on a 400 naming it
    cache_prefix: str  # prompt_cache_key = "<prefix>-<conversation id>"

    @classmethod
    def from_config(
        cls,
        provider: ProviderConfig,
        profile: ModelProfile,
        *,
        run_name: str,
        openai_like: bool,
    ) -> ShapeSettings:
        """``openai_like``: the server is OpenAI's, Azure's or the simulator playing them."""
        caps = profile.caps
        if provider.max_tokens_param == "auto":
            token: TokenParam = (
                "max_completion_tokens" if openai_like or caps.reasoning else "max_tokens"
            )
        else:
            token = provider.max_tokens_param
        cache = openai_like if provider.prompt_cache_key is None else provider.prompt_cache_key
        # The run name may be private: the key carries only a digest of it.
        digest = hashlib.blake2b(run_name.encode(), digest_size=4).hexdigest()
        return cls(
            model=provider.model,
            caps=caps,
            token_param=token,
            token_param_auto=provider.max_tokens_param == "auto",
            efforts=dict(profile.efforts),
            service_tier=provider.service_tier,
            cache_key=cache,
            cache_key_auto=provider.prompt_cache_key is None,
            cache_prefix=f"m2l-{digest}",
        )


@dataclass(frozen=True, slots=True)
class Adapted:
    """A refused parameter was adapted: send the request again. ``note`` is the one line to
    say (None: another request already adapted it)."""

    param: str
    now: str  # what goes out instead: the other name, or "not sent"
    note: str | None


class RequestShape:
    """Writes request bodies for one run; remembers the adaptations made so far."""

    __slots__ = ("_cache_key", "_settings", "_switched", "_token_param")

    def __init__(self, settings: ShapeSettings, *, adapted: dict[str, str] | None = None) -> None:
        self._settings = settings
        self._token_param: TokenParam = settings.token_param
        self._cache_key = settings.cache_key
        self._switched: dict[str, str] = {}
        for param, now in (adapted or {}).items():  # as recorded by an earlier session
            if param in _OTHER and now in _OTHER and settings.token_param_auto:
                self._token_param = _OTHER[param]
                self._switched[param] = now
            elif param == "prompt_cache_key" and settings.cache_key_auto:
                self._cache_key = False
                self._switched[param] = now

    @property
    def settings(self) -> ShapeSettings:
        return self._settings

    @property
    def token_param(self) -> str:
        return self._token_param

    @property
    def adapted(self) -> dict[str, str]:
        """Parameter → what replaced it, for the run's record."""
        return dict(self._switched)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of ``request`` for this provider and model."""
        s = self._settings
        body: dict[str, Any] = {
            "model": s.model,
            "messages": [m.as_openai() for m in request.messages],
            self._token_param: request.max_tokens,
        }
        if s.caps.temperature:
            body["temperature"] = request.temperature
        if request.json_mode:
            body["response_format"] = {"type": "json_object"}
        if request.seed is not None:
            body["seed"] = request.seed
        parsed = parse_request_key(request.key)
        if parsed is not None:
            effort = s.efforts.get(step_kind(parsed[1]).value)
            if effort is not None:
                body["reasoning_effort"] = effort
            if self._cache_key:
                body["prompt_cache_key"] = f"{s.cache_prefix}-{parsed[0]}"
        tier = request.service_tier or s.service_tier
        if tier is not None:
            body["service_tier"] = tier
        return body

    def adapt(self, error: UnsupportedParameter) -> Adapted | None:
        """Adapt to a refused parameter m2l chose by itself; None when the refusal is fatal."""
        param, s = error.param, self._settings
        if param in _OTHER and s.token_param_auto:
            if param != self._token_param:
                return Adapted(param, self._token_param, None)  # sent before the switch
            if param in self._switched or _OTHER[param] in self._switched:
                return None  # both names refused
            self._token_param = _OTHER[param]
            self._switched[param] = self._token_param
            note = (
                f"the server refuses {param!r}; the token cap now goes out as "
                f"{self._token_param!r} (set provider.max_tokens_param to choose)"
            )
            return Adapted(param, self._token_param, note)
        if param == "prompt_cache_key" and s.cache_key_auto and s.cache_key:
            if not self._cache_key:
                return Adapted(param, "not sent", None)
            self._cache_key = False
            self._switched[param] = "not sent"
            note = (
                "the server refuses 'prompt_cache_key'; it is no longer sent "
                "(set provider.prompt_cache_key = false to say so)"
            )
            return Adapted(param, "not sent", note)
        return None

    def explain(self, error: UnsupportedParameter) -> str:
        """The line that stops the run: the refused parameter and the config key that sets it."""
        s, param = self._settings, error.param
        keys = {
            "max_tokens": 'provider.max_tokens_param (try "max_completion_tokens")',
            "max_completion_tokens": 'provider.max_tokens_param (try "max_tokens")',
            "temperature": (
                f'generation.temperature, or [provider.capabilities."{s.model}"] '
                "temperature = false to stop sending it"
            ),
            "top_p": f'[provider.capabilities."{s.model}"] top_p = false',
            "reasoning_effort": (
                "provider.reasoning_effort and generation.reasoning_effort (supported values "
                f'are in the message), or [provider.capabilities."{s.model}"] efforts = [] to '
                "stop sending it"
            ),
            "service_tier": "provider.service_tier (leave it out for the default tier)",
            "prompt_cache_key": "provider.prompt_cache_key = false",
            "seed": "(m2l sends a seed per request; this server refuses it)",
            "response_format": "the step's JSON mode (this server refuses response_format)",
        }
        key = keys.get(param, "the provider section")
        return (
            f"the server refuses the parameter {param!r} on every request "
            f"({error.status} {error.code}): {str(error).rstrip('.')}. Change {key}; no request "
            "can succeed until then"
        )
