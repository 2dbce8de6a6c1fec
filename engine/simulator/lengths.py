"""How long the simulator's replies are meant to be, before any cap cuts them.

``uniform`` (the default): a budget drawn uniformly between ``sim.min_completion_tokens`` and
``sim.max_completion_tokens``; instructions are a sentence or two whatever the budget.
``realistic``: lengths shaped like a GPT-4-class model's, per step kind and language. An answer
is log-normal around 220 English tokens (sigma 0.55) with a heavy tail: one in twenty is a
long-form reply two to four times longer. An evolved instruction or a follow-up question is
short, log-normal around 45 English tokens (sigma 0.35). A language's replies take its token
cost times English's tokens (the same content, written in it). The min/max bounds do not apply.
Pure: a function of the draw's random source.
"""

from __future__ import annotations

import math
import random

from engine.simsettings import SimSettings

__all__ = ["ANSWER_MEDIAN", "INSTRUCTION_MEDIAN", "reply_budget"]

ANSWER_MEDIAN = 220.0
ANSWER_SIGMA = 0.55
LONG_SHARE = 0.05  # answers written long-form (a detailed essay, code, a table)
LONG_FACTOR = (2.0, 4.0)
INSTRUCTION_MEDIAN = 45.0
INSTRUCTION_SIGMA = 0.35
_INSTRUCTION_BOUNDS = (8, 400)
_ANSWER_BOUNDS = (8, 16_000)


def reply_budget(
    settings: SimSettings, rng: random.Random, *, instruction: bool, factor: float = 1.0
) -> int:
    """Tokens the reply is written to; ``factor``: the language's tokens per English token."""
    if settings.reply_lengths == "uniform":
        return rng.randint(settings.min_completion_tokens, settings.max_completion_tokens)
    if instruction:
        english = INSTRUCTION_MEDIAN * math.exp(INSTRUCTION_SIGMA * rng.gauss(0.0, 1.0))
        low, high = _INSTRUCTION_BOUNDS
    else:
        english = ANSWER_MEDIAN * math.exp(ANSWER_SIGMA * rng.gauss(0.0, 1.0))
        if rng.random() < LONG_SHARE:
            english *= rng.uniform(*LONG_FACTOR)
        low, high = _ANSWER_BOUNDS
    return max(low, min(high, round(english * factor)))
