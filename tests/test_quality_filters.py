"""check_reply and check_instruction: order of filters, stable reasons, configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.quality import (
    REASONS,
    FilterConfig,
    Verdict,
    check_instruction,
    check_length,
    check_reply,
)
from prompts.languages import load_languages


@dataclass(frozen=True, slots=True)
class Lang:
    """A stand-in for prompts.Language: the fields the filters read."""

    iso639_1: str | None
    iso639_3: str
    script: str


SPANISH = Lang("es", "spa", "Latn")
MARATHI = Lang("mr", "mar", "Deva")
JAPANESE = Lang("ja", "jpn", "Jpan")

ES_REPLY = (
    "La fotosíntesis es el proceso mediante el cual las plantas usan la luz del sol para "
    "transformar el agua y el dióxido de carbono en azúcar y oxígeno. Ocurre sobre todo en las "
    "hojas, dentro de los cloroplastos."
)
MR_REPLY = (
    "प्रकाशसंश्लेषण ही अशी प्रक्रिया आहे ज्यामध्ये वनस्पती सूर्यप्रकाशाचा वापर करून पाणी आणि "
    "कार्बन डायऑक्साइडचे साखर आणि ऑक्सिजनमध्ये रूपांतर करतात."
)
HI_REPLY = (
    "प्रकाश संश्लेषण वह प्रक्रिया है जिसमें पौधे सूर्य के प्रकाश का उपयोग करके पानी और कार्बन "
    "डाइऑक्साइड को शर्करा और ऑक्सीजन में बदलते हैं।"
)
JA_REPLY = "光合成とは、植物が太陽の光を使って水と二酸化炭素を糖と酸素に変える仕組みのことです。"


@pytest.mark.parametrize(
    ("text", "language", "previous", "reason"),
    [
        (ES_REPLY, SPANISH, (), None),
        (MR_REPLY, MARATHI, (), None),
        (JA_REPLY, JAPANESE, (), None),
        ("", SPANISH, (), "empty"),
        ("  \n\t ", SPANISH, (), "empty"),
        ("k", SPANISH, (), "too_short"),
        ("Lo siento, pero no puedo ayudarte con eso.", SPANISH, (), "refusal"),
        ("Como modelo de lenguaje, no tengo opiniones. " + ES_REPLY, SPANISH, (), "leaked_markers"),
        ("No sé. " * 30, SPANISH, (), "repetition"),
        (ES_REPLY, SPANISH, (ES_REPLY,), "cross_turn_repetition"),
        (HI_REPLY, MARATHI, (), "wrong_language"),
        (
            "Photosynthesis turns light, water and carbon dioxide into sugar.",
            SPANISH,
            (),
            "wrong_language",
        ),
    ],
)
def test_check_reply_reasons(
    text: str, language: Lang, previous: tuple[str, ...], reason: str | None
) -> None:
    """Each failure has its stable reason; good replies in several scripts pass."""
    verdict = check_reply(text, language=language, previous=previous)
    assert verdict.reason == reason, verdict
    assert verdict.ok is (reason is None)
    if reason is not None:
        assert reason in REASONS and verdict.detail


def test_wrong_language_detail_names_both_languages() -> None:
    """The detail says what was detected and what was expected."""
    verdict = check_reply(HI_REPLY, language=MARATHI)
    assert "detected hi" in verdict.detail and "expected mr" in verdict.detail


def test_cheap_filters_run_before_the_language_check() -> None:
    """A refusal in the wrong language is reported as a refusal."""
    verdict = check_reply("I'm sorry, but I can't help with that request.", language=MARATHI)
    assert verdict.reason == "refusal"


def test_switches_turn_filters_off() -> None:
    """check_language, refusal and markers can each be switched off."""
    off = FilterConfig(check_language=False, refusal=False, markers=False)
    for text in (
        HI_REPLY,
        "Lo siento, pero no puedo ayudarte con eso.",
        "Target language: Marathi",
    ):
        assert check_reply(text, language=MARATHI, config=off).ok


def test_check_instruction() -> None:
    """Instructions get length, markers, refusal, repetition and language checks."""
    ok = "Explica en tres frases cómo funciona la fotosíntesis para un niño de diez años."
    assert check_instruction(ok, language=SPANISH).ok
    assert check_instruction("Hola", language=SPANISH).reason == "too_short"
    leaked = "Rewritten instruction: " + ok
    assert check_instruction(leaked, language=SPANISH).reason == "leaked_markers"
    english = "Explain in three sentences how photosynthesis works for a ten-year-old child."
    assert check_instruction(english, language=SPANISH).reason == "wrong_language"


def test_length_limits_are_configurable() -> None:
    """min_reply_chars counts non-space characters."""
    assert check_length("a b", 2).ok
    assert check_length("a b", 3).reason == "too_short"
    assert check_reply("Sí.", language=SPANISH).ok
    assert check_reply("Sí.", language=SPANISH, config=FilterConfig(min_reply_chars=5)).reason == (
        "too_short"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_ngram_repeat_ratio", 1.5),
        ("near_dup_threshold", -0.1),
        ("ngram_size", 0),
        ("language_min_chars", -1),
        ("dedup_num_perm", 8),
        ("extra_markers", ("",)),
    ],
)
def test_config_rejects_out_of_range_values(field: str, value: object) -> None:
    """A bad threshold raises ValueError naming it (load_config adds the file and key path)."""
    with pytest.raises(ValueError, match=field):
        FilterConfig(**{field: value})  # type: ignore[arg-type]


def test_verdict_values() -> None:
    """Verdicts are small frozen values with readable text."""
    assert str(Verdict.passed()) == "ok"
    failed = Verdict.failed("refusal", "en: 'I can't'")
    assert str(failed) == "refusal: en: 'I can't'"
    assert not failed.ok
    assert REASONS == (
        "empty",
        "too_short",
        "repetition",
        "cross_turn_repetition",
        "refusal",
        "leaked_markers",
        "wrong_language",
        "near_duplicate",
        "exact_duplicate",
        "not_evolved",
        "truncated",
    )


def test_bundled_seed_instructions_all_pass() -> None:
    """Every human-written seed instruction of the bundled 41-language sample passes."""
    table = load_languages()
    seeds = Path(__file__).resolve().parent.parent / "examples" / "seeds.jsonl"
    failures = []
    count = 0
    for line in seeds.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        language = table.lookup(row["language"])
        verdict = check_instruction(row["inputs"], language=language)
        count += 1
        if not verdict.ok:
            failures.append((row["language"], str(verdict), row["inputs"][:60]))
    assert count > 100
    assert failures == []


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ("swh", "Maagizo mapya: Eleza kwa kina jinsi mvua inavyonyesha katika pwani ya Kenya."),
        ("spa", "**Nueva instrucción:** Explica con detalle cómo se forman las nubes de lluvia."),
        ("hin", "नया निर्देश: समुद्र तट पर बारिश कैसे होती है, इसे विस्तार से समझाइए।"),
        ("zho", "新指令：请详细解释沿海地区的降雨是如何形成的，并举出两个例子。"),
        ("eng", "Rewritten instruction:\nExplain in detail how coastal rain forms, with examples."),
        ("yor", "Ìtọ́ni tuntun: Ṣàlàyé bí òjò ṣe ń rọ̀ ní etíkun, kí o sì fún wa ní àpẹẹrẹ méjì."),
    ],
)
def test_leaked_output_labels_are_caught_in_each_language(code: str, text: str) -> None:
    """An instruction that starts with a label like "New instruction:" fails, in any language."""
    from prompts.languages import load_languages

    verdict = check_instruction(text, language=load_languages().lookup(code))
    assert verdict.reason == "leaked_markers" and "label" in verdict.detail


def test_a_label_word_inside_a_sentence_or_a_reply_is_no_leak() -> None:
    """The same words in running text, or a reply's "Follow-up question:" line, pass."""
    from prompts.languages import load_languages

    sw, en = load_languages().lookup("swh"), load_languages().lookup("eng")
    text = "Eleza kwa kina jinsi mvua inavyonyesha, na maagizo mapya ya serikali kuhusu kilimo."
    assert check_instruction(text, language=sw).ok
    reply = "Here is the plan for the week.\n\nFollow-up question: shall we meet on Friday?"
    assert check_reply(reply, language=en).ok


def test_an_instruction_equal_to_its_seed_or_its_answer_is_not_evolved() -> None:
    """An evolved instruction that repeats the seed (or gives its answer) fails as not_evolved."""
    from engine.quality import check_evolved

    seed = "Explain why the sky is blue."
    assert check_evolved("Explain why the sky is blue.", seed, None, FilterConfig()).reason == (
        "not_evolved"
    )
    assert not check_evolved("Explain why the sky is blue!", seed, None, FilterConfig()).ok
    answer = "The sky is blue because air scatters short wavelengths of sunlight more."
    assert check_evolved(answer, seed, answer, FilterConfig()).reason == "not_evolved"
    harder = (
        "Explain why the sky is blue at noon but red at sunset, in three numbered steps, "
        "naming the physical law involved."
    )
    assert check_evolved(harder, seed, answer, FilterConfig()).ok
    assert check_evolved(seed, seed, None, FilterConfig(not_evolved=False)).ok


def test_a_songs_chorus_is_no_repetition_but_a_loop_is() -> None:
    """A chorus recurring between verses is kept; the same block over and over is a loop."""
    chorus = (
        "Chorus:\nHold on, hold on, the sun will find the town,\nHold on, it never lets us down."
    )
    verses = [
        "Verse 1:\nThe morning bus is late again, the rain is on the glass,\n"
        "I count the lights along the road and watch the hours pass.",
        "Verse 2:\nMy mother hums the same old tune she learned when she was young,\n"
        "It fills the kitchen every day, in our own mother tongue.",
        "Verse 3:\nThe market stalls are opening, the bread is warm and sweet,\n"
        "And children run to school along the busy, shining street.",
        "Bridge:\nAnd when the night is long and cold, we sing it once again,\n"
        "For every light that's burning low, for every tired friend.",
    ]
    song = "\n\n".join(part for verse in verses for part in (verse, chorus))
    from engine.quality import check_repetition

    assert check_repetition(song).ok
    assert check_repetition("\n\n".join([verses[0], *[chorus] * 6])).reason == "repetition"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from("abcdef"), max_size=12),
    st.lists(st.sampled_from("abcdef"), max_size=12),
    st.sampled_from([0.0, 0.5, 0.8, 0.9, 1.0]),
)
def test_similarity_bounds_decide_as_the_full_ratio_does(
    left: list[str], right: list[str], limit: float
) -> None:
    """The evolution check's shortcut: at or above the limit it is difflib's ratio itself;
    below, a value below the limit, exactly when the ratio is below it."""
    from engine.quality.filters import _similarity_from
    from engine.quality.text import unit_similarity

    ratio = unit_similarity(left, right)
    got = _similarity_from(left, right, limit)
    if ratio >= limit:
        assert got == ratio
    else:
        assert got < limit
