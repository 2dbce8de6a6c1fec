"""How the simulator serves reasoning models and service tiers, as OpenAI does.

Pure: ``check_params`` returns the 400 OpenAI answers for a parameter the model refuses (or
None), and ``reasoning_tokens`` draws the hidden reasoning a reply spends, from the request's
``reasoning_effort``. Nothing here raises.
"""

from __future__ import annotations

from engine.simsettings import SimSettings
from engine.simulator.faults import rng_for
from engine.simulator.request import SimRequest
from engine.simulator.wire import ApiError, unsupported_parameter, unsupported_value

__all__ = ["DEFAULT_EFFORT", "SERVICE_TIERS", "check_params", "reasoning_tokens"]

DEFAULT_EFFORT = "medium"  # what OpenAI's reasoning models use when none is sent
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")

# Hidden reasoning tokens a reply spends, drawn uniformly in [low, high] per effort. The spans
# are of the order OpenAI's reasoning models report for short generation tasks.
_REASONING_SPAN: dict[str, tuple[int, int]] = {
    "none": (0, 0),
    "minimal": (0, 64),
    "low": (64, 512),
    "medium": (256, 1536),
    "high": (768, 4096),
    "xhigh": (1536, 8192),
}
_DEFAULT_ONLY = "Only the default (1) value is supported."


def _listing(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def check_params(settings: SimSettings, req: SimRequest) -> ApiError | None:
    """The 400 for a parameter ``req.model`` does not take, or None when all are accepted."""
    for name in settings.refuse_params:
        if name in req.params:
            other = {"max_completion_tokens": "max_tokens", "max_tokens": "max_completion_tokens"}
            hint = f" Use '{other[name]}' instead." if name in other else ""
            return unsupported_parameter(name, hint)
    tier = req.service_tier
    if tier is not None and tier not in SERVICE_TIERS:
        return unsupported_value(
            "service_tier", f"'{tier}'", f"Supported values are: {_listing(SERVICE_TIERS)}."
        )
    if tier == "flex" and not settings.offers_flex(req.model):
        return unsupported_value(
            "service_tier", "'flex'", "Supported values are: 'auto', 'default', and 'priority'."
        )
    if not settings.is_reasoning(req.model):
        if req.reasoning_effort is not None:
            return unsupported_parameter("reasoning_effort", "")
        return None
    if req.token_param == "max_tokens":
        return unsupported_parameter("max_tokens", " Use 'max_completion_tokens' instead.")
    for name, value in (("temperature", req.temperature), ("top_p", req.top_p)):
        if value is not None and value != 1.0:
            return unsupported_value(name, f"{value:g}", _DEFAULT_ONLY)
    effort = req.reasoning_effort
    if effort is not None and effort not in settings.reasoning_efforts:
        return unsupported_value(
            "reasoning_effort",
            f"'{effort}'",
            f"Supported values are: {_listing(settings.reasoning_efforts)}.",
        )
    return None


def reasoning_tokens(settings: SimSettings, req: SimRequest, attempt: int) -> int:
    """Hidden reasoning tokens for this admission of ``req`` (0 for a model that does not reason).

    A retried request reasons afresh, as a real model samples again.
    """
    if not settings.is_reasoning(req.model):
        return 0
    low, high = _REASONING_SPAN.get(req.reasoning_effort or DEFAULT_EFFORT, (256, 1536))
    return rng_for(settings.seed, b"m2l-sim-reason", req.key, attempt).randint(low, high)
