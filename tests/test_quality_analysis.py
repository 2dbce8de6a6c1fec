"""engine.quality.analysis: one analysis per text, the same units and verdicts as before, and a
bounded sample of a long text for the language checks."""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pytest

from engine.quality import analysis as analysis_module
from engine.quality import check_language, check_reply
from engine.quality.analysis import (
    SAMPLE_LETTERS,
    Analysis,
    AnalysisCache,
    joined_units,
    sample_segments,
)
from engine.quality.langid import default_detector
from engine.quality.text import _walk_units, normalize_for_match, units
from prompts.languages import load_languages

CORPUS = Path(__file__).parent / "data" / "language_corpus.toml"
CASES = tomllib.loads(CORPUS.read_text(encoding="utf-8"))["case"]
TEXTS = [case["text"] for case in CASES]
EDGES = [
    "don't 'quoted' words_with_underscores x²  ½ ٣٤ ①",
    "नमस्ते दुनिया — हिन्दी, मराठी।  \u0301leading mark",
    "مَرْحَبًا بِالْعَالَم \u00a0 non-breaking",
    "Ελληνικά ΣΊΣΥΦΟΣ ß ǅ ﬁ Straße",
    "emoji 🙂 mid👍word and\ttabs\nlines",
    "ไทย่ ก่อน ่แยก",  # a Thai tone mark after a space attaches to the letter before
    "中文，日本語のテキスト、한국어 텍스트",
]
L = load_languages()


def _reference_fold(text: str) -> str:
    """normalize_for_match as it was written first: one character at a time."""
    from engine.quality.text import _FOLD

    if text.isascii():
        return " ".join(text.casefold().translate(_FOLD).split())
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD))
    kept = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return " ".join(kept.casefold().translate(_FOLD).split())


@pytest.mark.parametrize("text", TEXTS + EDGES)
def test_units_equal_the_character_walk(text: str) -> None:
    """The fast path gives exactly the units of the character-by-character walk."""
    assert units(text) == _walk_units(text.casefold())


@pytest.mark.parametrize("text", TEXTS + EDGES)
def test_folding_equals_the_character_by_character_fold(text: str) -> None:
    """Marks are removed by a table, with the same result as filtering each character."""
    assert normalize_for_match(text) == _reference_fold(text)


def test_joined_units_equal_units_of_the_joined_text() -> None:
    """A conversation's units come from its turns' units, the same as tokenizing it whole,
    also where a turn opens with a mark that joins the previous turn's Thai letter."""
    parts = [Analysis(t) for t in TEXTS[:12] + EDGES]
    assert joined_units(parts) == units("\n".join(p.text for p in parts))
    thai = [Analysis("ภาษาไทย ก"), Analysis("\u0e48 ต่อ")]
    assert joined_units(thai) == units("ภาษาไทย ก\n\u0e48 ต่อ")


def test_sample_keeps_short_texts_whole_and_bounds_long_ones() -> None:
    """Every sentence of a short text; about SAMPLE_LETTERS letters spread over a long one."""
    short = Analysis(TEXTS[0])
    assert sample_segments(short.segments(), 20) == [s for s in short.segments() if s.letters >= 20]
    numbered = " ".join(f"Sentence number {i} says something plain and simple." for i in range(800))
    long = Analysis(numbered)
    sample = sample_segments(long.segments(), 20)
    letters = sum(s.letters for s in sample)
    assert SAMPLE_LETTERS * 0.8 <= letters <= SAMPLE_LETTERS + max(s.letters for s in sample)
    assert sample[0].text.startswith("Sentence number 0 ")
    assert any(s.text.startswith("Sentence number 7") for s in sample[-10:])  # the end is read


class CountingDetector:
    """The default detector, counting the characters it is asked to read."""

    def __init__(self) -> None:
        self.chars = 0
        self.calls = 0

    def knows(self, code: str) -> bool:
        return default_detector().knows(code)

    def rank(self, text: str) -> Sequence[tuple[str, float]]:
        self.calls += 1
        self.chars += min(len(text), default_detector().max_chars)
        return default_detector().rank(text)


def _pure(code: str) -> str:
    return next(c["text"].strip() for c in CASES if c["language"] == code and c.get("pure"))


def test_language_of_a_long_text_is_judged_on_a_bounded_sample() -> None:
    """A reply 10x longer costs the identifier no more characters than one 4x longer."""
    german = _pure("deu")
    costs = []
    for copies in (40, 400):
        counting = CountingDetector()
        assert check_language("\n".join([german] * copies), L.lookup("deu"), detector=counting).ok
        costs.append(counting.chars)
    assert costs[1] <= costs[0] + 500
    assert costs[1] <= default_detector().max_chars + 2 * SAMPLE_LETTERS


def test_a_long_reply_drifting_into_another_language_is_still_caught() -> None:
    """German for 4,000 characters, then as much English: the identifier reads only the
    start, so the sample of sentences spread over the reply is what finds the English."""
    german = _pure("deu")
    english = (
        "Household budgets help people understand where their money goes every month. "
        "Write down every expense, even small ones, and sort them into groups at the end."
    )
    start = "\n".join([german] * 10)
    drifting = start + "\n" + "\n".join([english] * (len(start) // len(english)))
    verdict = check_language(drifting, L.lookup("deu"))
    assert not verdict.ok and verdict.reason == "wrong_language"
    assert "en" in verdict.detail
    assert check_language("\n".join([german] * 60), L.lookup("deu")).ok


def test_each_text_is_tokenized_once_for_all_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_reply with analyses: the reply and each earlier answer are tokenized once."""
    calls: list[str] = []
    real = analysis_module.units

    def counted(text: str) -> list[str]:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(analysis_module, "units", counted)
    reply, earlier = Analysis(_pure("fra")), Analysis(_pure("deu"))
    for _ in range(3):
        assert check_reply(reply, language=L.lookup("fra"), previous=[earlier]).ok
    assert sorted(calls) == sorted([reply.text, earlier.text])


def test_analysis_cache_is_bounded_by_characters() -> None:
    """The oldest texts are dropped once the held characters pass the bound."""
    cache = AnalysisCache(max_chars=100)
    first = cache.get("a" * 40)
    assert cache.get("a" * 40) is first
    for i in range(5):
        cache.get(str(i) * 40)
    assert len(cache) == 2 and cache.get("a" * 40) is not first


def language_texts(analysis: Analysis, min_letters: int) -> list[str]:
    """What the language checks may ask the identifier about ``analysis``: its body and the
    sampled sentences (with and without quotes) when it has ``min_letters`` letters, else
    nothing (engine.quality.langid reads only these)."""
    from engine.quality.analysis import sample_segments

    if analysis.letters < min_letters:
        return []
    texts = [analysis.body]
    for quotes in (False, True):
        texts.extend(
            seg.text for seg in sample_segments(analysis.segments(quotes=quotes), min_letters)
        )
    return texts


def test_ranking_ahead_fills_what_the_checks_ask_for_with_the_same_rankings() -> None:
    """rank_ahead over the texts language_texts names: the language check then asks the
    detector nothing more, and its verdicts are the ones made without ranking ahead."""
    from engine.quality.analysis import rank_ahead

    class ManyDetector(CountingDetector):
        def rank_many(self, texts: Sequence[str]) -> Sequence[Sequence[tuple[str, float]]]:
            return default_detector().rank_many(texts)

    texts = [c["text"] for c in CASES]
    languages = [L.lookup(c["language"]) for c in CASES]
    plain = [
        check_language(t, lang, detector=CountingDetector())
        for t, lang in zip(texts, languages, strict=True)
    ]
    many = ManyDetector()
    analyses = [Analysis(t) for t in texts]
    rank_ahead(((a, t) for a in analyses for t in language_texts(a, 20)), many)
    ahead = [
        check_language(a, lang, detector=many) for a, lang in zip(analyses, languages, strict=True)
    ]
    assert ahead == plain
    assert many.calls == 0  # every ranking was made ahead
    assert language_texts(Analysis("short"), 20) == []


def test_folding_skips_the_fold_table_only_where_it_changes_nothing() -> None:
    """normalize_for_match is the plain definition on every corpus text and on text holding
    each character the fold table maps (ASCII, accents, hooks, quotes, joiners)."""
    from engine.quality import text as text_module

    def plain(text: str) -> str:
        fold = text_module._FOLD
        decomposed = unicodedata.normalize("NFKD", text.translate(fold))
        kept = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
        return " ".join(kept.casefold().translate(fold).split())

    samples = TEXTS + EDGES + ["plain `ascii` Text", "Ƙasar Ɗan ŋ ɛ ɔ «quoted» „x“ ’a‘ ي ك ۀ ة"]
    samples += [f"a{chr(code)}b C" for code in text_module._FOLD]
    for sample in samples:
        assert normalize_for_match(sample) == plain(sample), sample


def test_ranking_ahead_for_the_checks_leaves_the_verdicts_unchanged() -> None:
    """rank_ahead_for_checks foresees most of what the language check asks (bodies, and the
    sentences of texts not clearly in one language); the verdicts stay the same."""
    from engine.quality.langid import rank_ahead_for_checks

    class ManyDetector(CountingDetector):
        def rank_many(self, texts: Sequence[str]) -> Sequence[Sequence[tuple[str, float]]]:
            return default_detector().rank_many(texts)

    texts = [c["text"] for c in CASES]
    languages = [L.lookup(c["language"]) for c in CASES]
    counting = CountingDetector()
    plain = [
        check_language(t, lang, detector=counting) for t, lang in zip(texts, languages, strict=True)
    ]
    many = ManyDetector()
    analyses = [Analysis(t) for t in texts]
    rank_ahead_for_checks(analyses, many, 20)
    ahead = [
        check_language(a, lang, detector=many) for a, lang in zip(analyses, languages, strict=True)
    ]
    assert ahead == plain
    assert many.calls < counting.calls / 10  # nearly everything was ranked ahead


def test_folding_a_text_whole_gives_its_lines_folded_one_by_one() -> None:
    """normalize_lines equals normalize_for_match line by line, on the corpus and on every
    kind of line break; it may fold whole because no code point's decomposition or case
    folding makes or removes a line break."""
    from engine.quality.text import _LINE_BREAK, normalize_lines

    breaks = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    # The characters a one-line text lacks (normalize_lines' shortcut) are the breaks.
    assert {ch for ch in map(chr, range(0x110000)) if len(f"a{ch}b".splitlines()) > 1} == set(
        breaks
    )
    assert all(_LINE_BREAK.fullmatch(ch) for ch in breaks)
    for code in range(0x110000):
        ch = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        for made in (unicodedata.normalize("NFKD", ch), ch.casefold()):
            if made != ch:
                assert not any(b in made for b in breaks), hex(code)
    samples = (
        TEXTS
        + EDGES
        + [
            "A\r\nB  c\n\n  É́ d\u2028Ƙ\x85x`y\x0bZ\x1c\u00ad",
            "ASCII line\nÜnïcödé line\r\n\tmixed `tick`\n",
            "\u0301 starts with a mark\nधन्यवाद\n",
            "a\r\u00ad\nb\r\u0301\nc",
            "a\n\u200c\u0301",
            "a\n\u00ad\nb\n",
            "\u00ad",
            "ß\n\u00ad",
            "one line, no break at all: Ünïcödé `tick`",
            "\u00ad",
            "",
        ]
    )
    for sample in samples:
        expected = "\n".join(normalize_for_match(line) for line in sample.splitlines())
        assert normalize_lines(sample) == expected, sample


def test_the_refusal_window_folded_from_the_markers_fold_is_the_same() -> None:
    """folded_head, made from folded_lines when the text is all prose and fits the window,
    equals normalize_for_match of the window: with every white space character leading,
    inside and between lines, on the corpus, with code, and past the window."""
    spaces = [chr(code) for code in range(0x110000) if chr(code).isspace()]
    samples = TEXTS + EDGES + ["see `code` and http://x.y/z here", "\u00ad", "", " \n "]
    samples += [f"{ch}{ch}Ab\u0301c{ch}d\ré\u00ad{ch}" for ch in spaces]
    for sample in samples:
        for window in (300, 7, None):
            head = sample.lstrip()
            expected = normalize_for_match(head if window is None else head[:window])
            assert Analysis(sample).folded_head(window) == expected, (sample, window)


@pytest.mark.parametrize("text", [*TEXTS, *EDGES, "", "123 !", "abc ДЖЗ 日本 abc é"])
def test_script_counts_equal_a_count_character_by_character(text: str) -> None:
    """Letters by script, and the order scripts first occur in (which picks the dominant
    one among equal counts), as classifying each character on its own gives them."""
    from collections import Counter

    from engine.quality.scripts import _letter_script, script_counts

    expected: Counter[str] = Counter()
    for ch in text:
        if script := _letter_script(ch):
            expected[script] += 1
    got = script_counts(text)
    assert list(got.items()) == list(expected.items())
