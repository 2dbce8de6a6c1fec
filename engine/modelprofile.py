"""The run's model as m2l will use it: its capabilities, each step's reasoning effort and token
cap (with room for hidden reasoning), checked against the config once, at load.

A vocabulary module (config types and the capability table only): the request shape, the budget
and the estimate all take the token caps from here, so the TPM charge, the reservation and the
projection agree. ``model_profile`` raises ConfigError for a setting the model cannot take.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.capabilities import Capabilities, CapabilityTable, load_capabilities, model_key
from engine.config import Config, StepTokens
from engine.errors import ConfigError

__all__ = ["STEP_KINDS", "ModelProfile", "model_profile", "unknown_model_lines"]

STEP_KINDS = ("evolve", "answer", "follow_up")


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
    steps = reply
    if caps.reasoning:
        steps = StepTokens(
            **{
                kind: min(caps.max_output, getattr(reply, kind) + table.room(efforts[kind]))
                for kind in STEP_KINDS
            }
        )
    return ModelProfile(caps, resolved is not None, efforts, reply, steps, table)
