"""Inline validation of step outputs: the quality filters that a regeneration can fix.

User turns (evolved instructions, follow-ups) are checked as instructions; answers as replies,
against the conversation's earlier answers for cross-turn repetition. Each output is judged
against the language it should be in (engine.quality.expect: a translation's target, a
cross-lingual passage, code-mixing). An evolved instruction (near-)identical to its seed, or to
the seed's reference answer, fails as "not_evolved". Checks that only make sense over the whole
run (near-duplicates) are left to ``m2l filter``. Each text is analysed once
(engine.quality.analysis): its checks share the analysis, and a conversation's earlier answers
keep theirs for the later steps' cross-turn checks. Each output accepted is stamped
(engine.gatecheck), so ``m2l filter`` with the same gate need not judge it again.
"""

from __future__ import annotations

from engine.conversation import Conversation, StepKind
from engine.gatecheck import chain, conversation_key, gate_fingerprint
from engine.quality import FilterConfig, Verdict, check_evolved, check_instruction, check_reply
from engine.quality.analysis import AnalysisCache
from engine.quality.expect import LanguageNames, expect_language
from engine.quality.langid import Expectation, LanguageDetector, default_detector
from prompts.languages import Language, LanguageTable, load_language_names

__all__ = ["QualityValidator"]


class QualityValidator:
    """The engine's Validator, backed by ``engine.quality``."""

    __slots__ = (
        "_analyses",
        "_config",
        "_detector",
        "_fingerprint",
        "_languages",
        "_names",
        "_resolved",
    )

    def __init__(
        self,
        languages: LanguageTable,
        config: FilterConfig | None = None,
        detector: LanguageDetector | None = None,
    ) -> None:
        self._languages = languages
        self._config = config or FilterConfig()
        self._detector = detector
        self._names: LanguageNames | None = None
        self._resolved: dict[str, Language] = {}
        self._analyses = AnalysisCache()
        # Stamps vouch for the default identifier only: a gate with another one never stamps.
        self._fingerprint = gate_fingerprint(self._config, languages) if detector is None else None

    def _language(self, conv: Conversation) -> Language:
        code = conv.plan.language_code
        language = self._resolved.get(code)
        if language is None:
            language = self._languages.lookup(code)
            self._resolved[code] = language
        return language

    def expectation(self, conv: Conversation, kind: StepKind) -> Expectation:
        """Which language the output of ``conv``'s next step (a ``kind`` step) should be in."""
        if self._names is None:
            self._names = LanguageNames(load_language_names(), self._languages)
        user_turns = [s.message.content for s in conv.steps if s.message.role == "user"]
        return expect_language(
            language=self._language(conv),
            kind=kind.value,
            task=conv.plan.task,
            evol_type=conv.plan.evol_type,
            turn=len(user_turns),
            instruction=user_turns[-1] if user_turns else None,
            seed_target=conv.plan.seed_target,
            names=self._names,
            detector=self._detector or default_detector(),
        )

    def check(self, conv: Conversation, kind: StepKind, text: str) -> Verdict:
        expect = self.expectation(conv, kind)
        analysis = self._analyses.get(text)
        if kind is StepKind.ANSWER:
            previous = [
                self._analyses.get(s.message.content)
                for s in conv.steps
                if s.kind is StepKind.ANSWER
            ]
            return check_reply(
                analysis, language=expect, previous=previous, config=self._config,
                detector=self._detector,
            )  # fmt: skip
        verdict = check_instruction(
            analysis, language=expect, config=self._config, detector=self._detector
        )
        if verdict.ok and kind is StepKind.EVOLVE:
            return check_evolved(analysis, conv.plan.seed_text, conv.plan.seed_target, self._config)
        return verdict

    def stamp(self, conv: Conversation, kind: StepKind, text: str) -> int | None:
        """The stamp on ``text``, accepted by ``check`` as ``conv``'s next step (a ``kind``
        step); None when the gate does not stamp or the step before is not stamped."""
        if self._fingerprint is None:
            return None
        previous = conv.steps[-1].gate_check if conv.steps else None
        if conv.steps and previous is None:
            return None  # its chain is broken: no stamp could match
        plan = conv.plan
        key = conversation_key(
            self._fingerprint,
            language_code=plan.language_code,
            task=plan.task,
            evol_type=plan.evol_type,
            seed_text=plan.seed_text,
            seed_target=plan.seed_target,
        )
        return chain(key, previous, kind.value, text)
