"""The run's model as m2l will use it: its capabilities, each step's reasoning effort and token
cap (with room for hidden reasoning), checked against the config once, at load.

A vocabulary module (config types and the capability table only): the request shape, the budget
and the estimate all take the token caps from here, so the TPM charge, the reservation and the
projection agree. ``model_profile`` raises ConfigError for a setting the model cannot take.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.capabilities import Capabilities, CapabilityTable, load_capabilities, model_key
from engine.config import Config, StepTokens
from engine.errors import ConfigError

__all__ = ["STEP_KINDS", "ModelProfile", "StepCaps", "model_profile", "unknown_model_lines"]

STEP_KINDS = ("evolve", "answer", "follow_up")


@dataclass(frozen=True, slots=True)
class StepCaps:
    """How a step's token cap is made: the visible reply's room (the configured value, scaled by
    the language's token cost and grown after cut replies, at most ``ceiling`` but never below
    the configured value), then the hidden reasoning's room on top, at most ``max_output``."""

    reply: StepTokens
    reasoning: Mapping[str, int] = field(default_factory=dict)  # step kind → reasoning room
    max_output: int | None = None  # the model's largest output (None: no bound known)

    def visible(
        self, kind: str, *, factor: float = 1.0, growth: float = 1.0, ceiling: int | None = None
    ) -> int:
        """The visible reply's room for step ``kind``."""
        base = int(getattr(self.reply, kind))
        room = math.ceil(base * factor * growth - 1e-9)
        if ceiling is not None:
            room = min(ceiling, room)
        return max(base, room)

    def cap(
        self, kind: str, *, factor: float = 1.0, growth: float = 1.0, ceiling: int | None = None
    ) -> int:
        """The token cap sent for step ``kind``: visible room plus reasoning room."""
        # Only the visible reply is text in a language: reasoning room is not scaled by it.
        total = self.visible(kind, factor=factor, growth=growth, ceiling=ceiling)
        total += self.reasoning.get(kind, 0)
        return min(self.max_output, total) if self.max_output is not None else total

    def tokens(self, *, factor: float = 1.0) -> StepTokens:
        """Each step kind's cap for a language of token-cost ``factor``."""
        return StepTokens(**{kind: self.cap(kind, factor=factor) for kind in STEP_KINDS})


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """Capabilities, per-step effort and per-step token cap of the run's model."""

    caps: Capabilities
    known: bool  # in the capability table or the config (False: defaults assumed)
    efforts: dict[str, str | None]  # step kind → reasoning_effort sent (None: not sent)
    reply_tokens: StepTokens  # the visible reply's room, as configured
    step_tokens: StepTokens  # the cap sent: reply room + reasoning room (reasoning models)
    table: CapabilityTable

    @property
    def step_caps(self) -> StepCaps:
        """How each step's cap is made, per language and after cut replies."""
        rooms = {kind: self.table.room(self.efforts[kind]) for kind in STEP_KINDS}
        return StepCaps(self.reply_tokens, rooms if self.reasoning else {}, self.caps.max_output)

    @property
    def expected_reasoning(self) -> dict[str, float]:
        """Hidden reasoning tokens assumed per reply, by step kind (0 for other models)."""
        return {
            kind: float(self.table.expected(self.efforts[kind])) if self.reasoning else 0.0
            for kind in STEP_KINDS
        }

    @property
    def reasoning(self) -> bool:
        return self.caps.reasoning


def unknown_model_lines(model: str) -> str:
    """The TOML a user adds to tell m2l what an unknown model accepts."""
    return (
        f'[provider.capabilities."{model}"]\n'
        "reasoning = false          # true for a model that spends hidden reasoning tokens\n"
        "context_window = 128000\n"
        "max_output = 16384\n"
        '# efforts = ["low", "medium", "high"]   # reasoning_effort values it takes\n'
        '# flex = true                            # offers service_tier = "flex"'
    )


def model_profile(config: Config, table: CapabilityTable | None = None) -> ModelProfile:
    """The profile of ``config.provider.model``; ConfigError for an effort or tier it refuses."""
    table = table or load_capabilities()
    provider, model = config.provider, config.provider.model
    resolved = table.resolve(model, provider.capabilities)
    caps = resolved or Capabilities(model_key(model), origin="defaults (model not in the table)")
    efforts: dict[str, str | None] = {}
    for kind in STEP_KINDS:
        step = getattr(config.generation.reasoning_effort, kind)
        effort = step or provider.reasoning_effort
        where = f"generation.reasoning_effort.{kind}" if step else "provider.reasoning_effort"
        if effort is not None and resolved is not None:
            if not caps.reasoning:
                raise ConfigError(
                    f"{where} = {effort!r}, but {model!r} is not a reasoning model "
                    f"({caps.origin}); remove it, or declare the model with "
                    f'[provider.capabilities."{model}"] reasoning = true'
                )
            if effort not in caps.efforts:
                takes = ", ".join(caps.efforts) or "none (it takes no reasoning_effort)"
                raise ConfigError(
                    f"{where} = {effort!r}, but {model!r} takes: {takes} ({caps.origin})"
                )
        efforts[kind] = effort if caps.reasoning and caps.efforts else None
    if provider.service_tier == "flex" and resolved is not None and not caps.flex:
        raise ConfigError(
            f'provider.service_tier = "flex", but {model!r} does not offer flex processing '
            f"({caps.origin}); leave service_tier out, choose a model that offers it, or set "
            f'[provider.capabilities."{model}"] flex = true if it does'
        )
    reply = config.generation.max_tokens
    rooms = {kind: table.room(efforts[kind]) for kind in STEP_KINDS} if caps.reasoning else {}
    steps = StepCaps(reply, rooms, caps.max_output).tokens()
    return ModelProfile(caps, resolved is not None, efforts, reply, steps, table)
