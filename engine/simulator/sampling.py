"""The simulator's reply lengths, sampled from its own composer: what ``m2l estimate`` assumes
for a run that goes to the embedded simulator."""

from __future__ import annotations

import random
from collections.abc import Mapping

from budgets.stepload import OutputLengths
from engine.config import StepTokens
from engine.simsettings import SimSettings
from engine.simulator.languages import ENGLISH, find_language
from engine.simulator.lengths import reply_budget
from engine.simulator.text import ReplySpec, composer_for, language_factor
from engine.tokens import get_encoding

__all__ = ["sim_outputs"]

_SIM_LANGUAGES = 8  # the run's most common languages sampled for the simulator's reply lengths
_SIM_SAMPLES = 400  # replies drawn per step kind, shared among those languages
# The simulator drafts this far past max_tokens before it cuts (engine/simulator/replies.py).
_SIM_OVERDRAFT = 8
_REALISTIC_OVERDRAFT = 64


def sim_outputs(
    sim: SimSettings, max_tokens: StepTokens, languages: Mapping[str, int], encoding_name: str
) -> OutputLengths:
    """The simulator's mean reply length per step kind, measured by drawing replies from its own
    composer the way it does: a budget uniform in its bounds, text written to it, cut at
    max_tokens (uniform budgets: instructions, evolve and follow-up, are a sentence or two
    whatever the budget; realistic lengths: simulator/lengths.py)."""
    realistic = sim.reply_lengths == "realistic"
    top = sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))[:_SIM_LANGUAGES]
    picked = [(find_language(name) or ENGLISH, n) for name, n in top] or [(ENGLISH, 1)]
    weight = sum(n for _, n in picked)
    encoding = get_encoding(encoding_name)
    rng = random.Random(sim.seed)
    means = {}
    for kind, instruction in (("evolve", True), ("answer", False), ("follow_up", True)):
        cap = int(getattr(max_tokens, kind))
        mean = 0.0
        for lang, n in picked:
            composer = composer_for(lang, encoding_name)
            factor = language_factor(lang, encoding_name) if realistic else 1.0
            spec = ReplySpec(lang, instruction=instruction, fill=realistic)
            draws = max(8, round(_SIM_SAMPLES * n / weight))
            total = 0
            for _ in range(draws):
                drawn = reply_budget(sim, rng, instruction=instruction, factor=factor)
                over = _REALISTIC_OVERDRAFT if realistic and drawn > cap else _SIM_OVERDRAFT
                budget = min(drawn, cap + over)
                text = composer.reply(spec, rng, budget)
                total += min(len(encoding.encode_ordinary(text)), cap)
            mean += total / draws * n / weight
        means[kind] = mean
    return OutputLengths(
        means["evolve"],
        means["answer"],
        means["follow_up"],
        basis=(
            "the simulator's replies, sampled from it: realistic lengths per step kind and "
            "language, cut at max_tokens"
            if realistic
            else f"the simulator's replies, sampled from it: {sim.min_completion_tokens}.."
            f"{sim.max_completion_tokens} token budgets cut at max_tokens; instructions are a "
            "sentence or two"
        ),
    )
