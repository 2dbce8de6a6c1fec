"""The prompter: a system message on every request, and max_tokens sized for the language."""

from __future__ import annotations

import math

import pytest

from engine.config import QualityConfig, StepTokens
from engine.conversation import (
    Conversation,
    Done,
    Outcome,
    Plan,
    StepKind,
    StepRules,
    Verdict,
    apply,
    next_request,
)
from engine.maxtokens import CapRule, LengthLearner
from engine.modelprofile import StepCaps
from engine.prompter import TaxonomyPrompter
from engine.tokens import TokenCounter
from prompts.languages import load_languages
from prompts.taxonomy import load_taxonomy
from prompts.tokencost import load_token_costs

TAXONOMY = load_taxonomy()
COUNTER = TokenCounter("gpt-4o")
TOKENS = StepTokens(evolve=100, answer=400, follow_up=100)


class AcceptAll:
    def check(self, conv: Conversation, kind: StepKind, text: str) -> Verdict:
        return Verdict.passed()

    def stamp(self, conv: Conversation, kind: StepKind, text: str) -> int | None:
        return None  # a fake gate vouches for nothing


def plan(language: str = "English", code: str = "eng", turns: int = 2) -> Plan:
    return Plan(
        1, 1, "Explain tides.", language, code, "open_qa", "DEEPEN", turns, ("CLARIFICATION",)
    )


def test_every_request_starts_with_its_steps_system_message() -> None:
    """Evolve, answer and follow-up requests each carry the taxonomy's system prompt first."""
    prompter = TaxonomyPrompter(TAXONOMY, COUNTER, TOKENS)
    conv = Conversation(plan())
    systems = []
    while not isinstance(nxt := next_request(conv, prompter, temperature=0.7), Done):
        request, rendered = nxt
        first = request.messages[0]
        assert first.role == "system" and "Target language: English" in first.content
        assert all(m.role != "system" for m in request.messages[1:])
        systems.append(first.content)
        conv = apply(
            conv, rendered, Outcome("Some text here."), prompter=prompter,
            validator=AcceptAll(), rules=StepRules(0),
        )  # fmt: skip
    assert len(systems) == 4 and len(set(systems)) == 3  # evolve, answer, follow-up
    assert "never answer" in systems[0] and "never answer" in systems[2]


def test_max_tokens_scale_with_the_languages_token_cost() -> None:
    """Amharic gets several times English's room; scaling off gives every language the same."""
    prompter = TaxonomyPrompter(TAXONOMY, COUNTER, TOKENS)
    english = prompter.max_tokens(Conversation(plan()), StepKind.ANSWER, 0)
    amharic = prompter.max_tokens(Conversation(plan("Amharic", "amh")), StepKind.ANSWER, 0)
    german = prompter.max_tokens(Conversation(plan("German", "deu")), StepKind.ANSWER, 0)
    assert english == 400
    assert 400 <= german < 500
    assert amharic >= 5 * english
    costs = load_token_costs()
    assert amharic == pytest.approx(
        400 * costs.factor(load_languages().lookup("amh"), "o200k_base"), abs=1
    )
    flat = TaxonomyPrompter(TAXONOMY, COUNTER, TOKENS, QualityConfig(scale_max_tokens=False))
    assert flat.max_tokens(Conversation(plan("Amharic", "amh")), StepKind.ANSWER, 0) == 400


def test_room_grows_by_the_factor_up_to_the_ceiling() -> None:
    """Each truncated try doubles the cap until the ceiling; it never falls below the config."""
    quality = QualityConfig(max_tokens_ceiling=1000, max_tokens_growth=2.0)
    prompter = TaxonomyPrompter(TAXONOMY, COUNTER, TOKENS, quality)
    conv = Conversation(plan())
    caps = [prompter.max_tokens(conv, StepKind.ANSWER, room) for room in range(4)]
    assert caps == [400, 800, 1000, 1000]
    low = TaxonomyPrompter(TAXONOMY, COUNTER, TOKENS, QualityConfig(max_tokens_ceiling=64))
    assert low.max_tokens(conv, StepKind.ANSWER, 3) == 400


def test_every_measured_language_costs_at_least_english() -> None:
    """The measured table covers English and is sane for every language in the table."""
    costs = load_token_costs()
    table = load_languages()
    factors = {lang.iso639_3: costs.factor(lang, "o200k_base") for lang in table}
    assert factors["eng"] == 1.0
    assert all(1.0 <= f <= 16.0 for f in factors.values())
    assert factors["amh"] > factors["yor"] > factors["deu"]


def test_only_the_reply_room_scales_and_the_cap_stays_within_the_models_output() -> None:
    """A reasoning model's cap: the reply's room scaled by the language, then the reasoning
    room unscaled, grown only on the reply side, never above the model's max_output."""
    caps = StepCaps(TOKENS, {"evolve": 1000, "answer": 1000, "follow_up": 1000}, 8000)
    prompter = TaxonomyPrompter(TAXONOMY, COUNTER, caps, QualityConfig(max_tokens_ceiling=50_000))
    english = Conversation(plan())
    amharic = Conversation(plan("Amharic", "amh"))
    factor = prompter.language_factor("amh")
    assert factor > 4
    assert prompter.max_tokens(english, StepKind.ANSWER, 0) == 400 + 1000
    first = prompter.max_tokens(amharic, StepKind.ANSWER, 0)
    assert first == math.ceil(400 * factor) + 1000  # not (400 + 1000) * factor
    grown = [prompter.max_tokens(amharic, StepKind.ANSWER, room) for room in range(1, 6)]
    assert grown[0] == min(8000, math.ceil(400 * factor * 2) + 1000)
    assert max(grown) == 8000 and grown == sorted(grown)
    # Equal caps at the top: a step cut there fails as truncated instead of growing forever.
    assert grown[-1] == grown[-2] == 8000


def test_a_model_whose_max_output_is_below_the_config_gets_its_max_output() -> None:
    """The cap never goes past what the model can write, whatever max_tokens says."""
    prompter = TaxonomyPrompter(TAXONOMY, COUNTER, StepCaps(TOKENS, {}, 300))
    conv = Conversation(plan())
    assert prompter.max_tokens(conv, StepKind.ANSWER, 0) == 300
    assert prompter.max_tokens(conv, StepKind.EVOLVE, 3) == 300


def test_learned_caps_go_out_on_first_tries_and_are_learned_per_group() -> None:
    """With a learner, a first try sends the cap learned from replies of its step kind and
    language; a try after a cut and a request without its prompt get the configured cap;
    grouped by script, Hindi learns from Marathi's replies (both Devanagari)."""
    learner = LengthLearner(CapRule(min_samples=20), window=100)
    prompter = TaxonomyPrompter(TAXONOMY, COUNTER, TOKENS, lengths=learner)
    english = Conversation(plan())
    assert prompter.max_tokens(english, StepKind.ANSWER, 0, 300) == 400
    prompter.learn([(1, "eng", 60 + i % 7, 400) for i in range(20)])
    learned = prompter.max_tokens(english, StepKind.ANSWER, 0, 300)
    assert 60 < learned < 200
    assert prompter.max_tokens(english, StepKind.ANSWER, 0) == 400
    assert prompter.max_tokens(english, StepKind.ANSWER, 1, 300) == 800
    assert prompter.max_tokens(english, StepKind.EVOLVE, 0, 300) == 100  # another step kind
    # German has no replies of its own yet: English's, in German tokens.
    german = Conversation(plan("German", "deu"))
    factor = prompter.language_factor("deu")
    assert prompter.max_tokens(german, StepKind.ANSWER, 0, 300) == pytest.approx(
        learned * factor, abs=3 + 0.1 * learned
    )
    scripts = TaxonomyPrompter(
        TAXONOMY, COUNTER, TOKENS, lengths=LengthLearner(CapRule(min_samples=20), window=100),
        group_by="script",
    )  # fmt: skip
    marathi = Conversation(plan("Marathi", "mar"))
    for i in range(20):
        scripts.observe(marathi, StepKind.ANSWER, 2000, 100 + i % 5)
    hindi = Conversation(plan("Hindi", "hin"))
    assert scripts.max_tokens(hindi, StepKind.ANSWER, 0, 300) < scripts.max_tokens(
        hindi, StepKind.ANSWER, 0
    )
