"""N-gram repetition inside a reply and across turns, in Latin, CJK and Devanagari text."""

from __future__ import annotations

import pytest

from engine.quality import (
    FilterConfig,
    check_cross_turn,
    check_repetition,
    cross_turn_overlap,
    most_repeated_sentence,
    repetition_ratio,
)
from engine.quality.text import units

EN_LIST = """Here are five tips for improving your sleep:

1. Keep a regular schedule. Go to bed and wake up at the same time every day, even on weekends, \
so that your body clock stays stable.
2. Make your bedroom dark and quiet. Use blackout curtains and consider earplugs if you live on \
a busy street.
3. Avoid screens before bed. The blue light from phones and laptops can delay the release of \
melatonin.
4. Watch what you drink. Caffeine in the afternoon and alcohol in the evening both reduce the \
quality of your sleep.
5. Get some daylight and exercise. A short walk in the morning helps your body know when it is \
time to be awake and when it is time to rest.

If you still have trouble sleeping after a few weeks, it is a good idea to talk to a doctor."""

EN_CAPITALS = """- Paris is the capital of France.
- Berlin is the capital of Germany.
- Rome is the capital of Italy.
- Madrid is the capital of Spain.
- Lisbon is the capital of Portugal."""

ES_PROSE = (
    "La Revolución Industrial comenzó en Gran Bretaña a finales del siglo XVIII y transformó por "
    "completo la manera en que las personas trabajaban y vivían. Antes de ella, la mayoría de la "
    "población se dedicaba a la agricultura y los productos se fabricaban a mano en pequeños "
    "talleres. Con la llegada de la máquina de vapor, las fábricas pudieron producir telas, "
    "herramientas y otros bienes en grandes cantidades y a un costo mucho menor."
)

ZH_PROSE = (
    "人工智能是指让计算机模拟人类智能的技术。它包括机器学习、自然语言处理和计算机视觉等多个领域。"
    "近年来，随着数据量的增加和计算能力的提升，人工智能在医疗、交通、金融等行业得到了广泛应用。"
    "例如，医生可以借助图像识别系统更快地发现疾病，银行可以利用算法识别可疑交易。"
)

JA_PROSE = (
    "富士山は日本で最も高い山で、標高は三千七百七十六メートルです。静岡県と山梨県にまたがっており、"
    "美しい円錐形の姿から古くから信仰の対象とされてきました。夏の登山シーズンには多くの人が山頂を"
    "目指し、山頂から見るご来光は特に人気があります。"
)

HI_PROSE = (
    "योग एक प्राचीन भारतीय अभ्यास है जो शरीर, मन और श्वास को संतुलित करने पर ध्यान देता है। "
    "नियमित रूप से योग करने से शरीर में लचीलापन बढ़ता है, मांसपेशियाँ मजबूत होती हैं और तनाव कम "
    "होता है। शुरुआत करने वालों को किसी प्रशिक्षित शिक्षक की देखरेख में सरल आसनों से शुरू करना चाहिए।"
)

EN_LOOP = (
    "The answer depends on many factors. "
    + "It is important to note that it is important to note that " * 8
)
ZH_LOOP = "人工智能是一门重要的技术。" + "我们需要不断学习，不断进步，" * 10
HI_LOOP = "यह एक अच्छा प्रश्न है। " + "हमें हमेशा मेहनत करनी चाहिए और आगे बढ़ना चाहिए। " * 8
TAIL_LOOP = EN_LIST + "\n\n" + "Remember to sleep well every night. " * 12


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        (EN_LIST, 0.0, 0.05),
        (ES_PROSE, 0.0, 0.05),
        (ZH_PROSE, 0.0, 0.08),
        (JA_PROSE, 0.0, 0.08),
        (HI_PROSE, 0.0, 0.05),
        (EN_CAPITALS, 0.2, 0.35),  # a parallel list repeats "is the capital of" honestly
        (EN_LOOP, 0.7, 1.0),
        (ZH_LOOP, 0.7, 1.0),
        (HI_LOOP, 0.7, 1.0),
    ],
)
def test_repetition_ratio_separates_prose_from_loops(text: str, low: float, high: float) -> None:
    """Natural prose scores near 0, lists moderately, the same phrase again and again near 1."""
    assert low <= repetition_ratio(text) <= high


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (EN_LIST, None),
        (EN_CAPITALS, None),
        (ES_PROSE, None),
        (ZH_PROSE, None),
        (JA_PROSE, None),
        (HI_PROSE, None),
        (EN_LOOP, "repetition"),
        (ZH_LOOP, "repetition"),
        (HI_LOOP, "repetition"),
        (TAIL_LOOP, "repetition"),  # a loop after an honest first half: sentence count
        ("முக்கியமான. " * 12, "repetition"),  # one Tamil word again and again
        ("yes yes yes", None),  # too few n-grams to judge
    ],
)
def test_check_repetition_with_default_thresholds(text: str, reason: str | None) -> None:
    """Default thresholds keep prose and lists and fail loops in Latin, CJK and Devanagari."""
    verdict = check_repetition(text)
    assert verdict.reason == reason, verdict
    assert verdict.ok is (reason is None)


def test_repetition_thresholds_are_configurable() -> None:
    """A stricter ratio fails the parallel list; a looser one lets a loop through."""
    assert not check_repetition(EN_CAPITALS, FilterConfig(max_ngram_repeat_ratio=0.2)).ok
    loose = FilterConfig(max_ngram_repeat_ratio=0.95, max_sentence_repeats=100)
    assert check_repetition(EN_LOOP, loose).ok
    assert not check_repetition(TAIL_LOOP, FilterConfig(max_sentence_repeats=11)).ok
    assert check_repetition(TAIL_LOOP, FilterConfig(max_sentence_repeats=12)).ok
    # Bigger n-grams see less of a parallel list.
    assert repetition_ratio(EN_CAPITALS, 5) < repetition_ratio(EN_CAPITALS, 3)


def test_units_split_cjk_into_characters_and_keep_indic_words_whole() -> None:
    """CJK text becomes one unit per character; a Devanagari word keeps its vowel signs."""
    assert units("我们需要学习") == ["我", "们", "需", "要", "学", "习"]
    assert units("मैं इसमें मदद नहीं कर सकता।") == ["मैं", "इसमें", "मदद", "नहीं", "कर", "सकता"]
    assert units("Hello, World! It's fine.") == ["hello", "world", "it's", "fine"]
    assert units("東京タワーは333m") == ["東", "京", "タ", "ワ", "ー", "は", "333m"]


def test_most_repeated_sentence_ignores_short_sentences() -> None:
    """Short recurring sentences ("Example:") are not counted; long repeated ones are."""
    text = "Example: one. Example: two. Example: three. Example: four. Example: five."
    assert most_repeated_sentence(text)[0] <= 1
    count, sentence = most_repeated_sentence("I hope this helps you today. " * 5)
    assert count == 5
    assert sentence == "i hope this helps you today"


@pytest.mark.parametrize(
    ("reply", "previous", "reason"),
    [
        (EN_LIST, [EN_LIST], "cross_turn_repetition"),  # the same answer again
        (EN_LIST.replace("five tips", "some tips"), [ES_PROSE, EN_LIST], "cross_turn_repetition"),
        (ZH_PROSE, [ZH_PROSE], "cross_turn_repetition"),
        (HI_PROSE, [HI_PROSE + " धन्यवाद।"], "cross_turn_repetition"),
        (ES_PROSE, [EN_LIST], None),
        (
            # A refinement that keeps some of the earlier answer's wording.
            "Sure, here is a shorter version: keep a regular schedule, make your bedroom dark "
            "and quiet, avoid screens before bed, watch what you drink, and get some daylight "
            "and exercise every day.",
            [EN_LIST],
            None,
        ),
        (EN_LIST, [], None),
    ],
)
def test_cross_turn_repetition(reply: str, previous: list[str], reason: str | None) -> None:
    """A reply copying earlier turns fails; a new answer or a rewrite passes."""
    assert check_cross_turn(reply, previous).reason == reason


def test_cross_turn_overlap_counts_pieces_of_several_turns() -> None:
    """A reply stitched from two earlier turns is a copy of the conversation."""
    first, second = EN_LIST[:400], EN_LIST[400:]
    assert cross_turn_overlap(EN_LIST, [first, second]) > 0.9
    assert cross_turn_overlap(EN_LIST, [first]) < 0.6
    assert check_cross_turn(EN_LIST, [first], FilterConfig(cross_turn_overlap=0.3)).reason == (
        "cross_turn_repetition"
    )
