"""The simulator's content: real words in the requested language and script, shapes, JSON."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import orjson
import pytest

from engine.simulator import (
    LANGUAGES,
    FaultRates,
    Language,
    ReplyWriter,
    SimRequest,
    SimSettings,
    find_language,
    parse_request,
    target_language,
)
from engine.simulator.counting import UsageCounter
from engine.simulator.languages import ENGLISH
from engine.simulator.text import INSTRUCTION_TOKENS, ReplySpec, composer_for, json_keys_in
from engine.tokens import TokenCounter

SEEDS_SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "seeds.jsonl"
# Japanese mixes kanji, kana and the iteration mark 々 ("IDEOGRAPHIC ITERATION MARK").
JAPANESE_OK = {"CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC"}


def lang(name: str) -> Language:
    found = find_language(name)
    assert found is not None, name
    return found


def request(
    *messages: tuple[str, str], max_tokens: int | None = 400, **extra: object
) -> SimRequest:
    body: dict[str, object] = {
        "model": "gpt-4o-sim",
        "messages": [{"role": r, "content": c} for r, c in messages],
        **extra,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    parsed = parse_request(orjson.dumps(body))
    assert isinstance(parsed, SimRequest)
    return parsed


def writer(**kwargs: object) -> ReplyWriter:
    return ReplyWriter(SimSettings(**kwargs), UsageCounter())  # type: ignore[arg-type]


def strip_punct(word: str) -> str:
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end]


def fold(word: str) -> str:
    # Turkish capital dotted İ casefolds to "i" + a combining dot; its small form is plain "i".
    return word.replace("İ", "i").casefold()


def words_of(text: str) -> list[str]:
    return [fold(w) for w in map(strip_punct, text.split()) if w]


def coverage(text: str, language: Language) -> float:
    """Share of the text's words that are words of ``language``."""
    words = words_of(text)
    vocabulary = {fold(w) for w in language.vocabulary}
    return sum(w in vocabulary for w in words) / len(words)


def letter_scripts(text: str) -> set[str]:
    return {unicodedata.name(ch).split()[0] for ch in text if ch.isalpha()}


def answer_in(language: Language, seed: int = 0, budget: int = 300) -> str:
    spec = ReplySpec(language)
    return composer_for(language, "o200k_base").reply(spec, random.Random(seed), budget)


def test_at_least_25_languages_in_8_scripts() -> None:
    """The simulator writes 41 languages spread over at least 8 scripts."""
    assert len(LANGUAGES) == 41
    assert len({language.script for language in LANGUAGES}) >= 8
    for language in LANGUAGES:
        assert 40 <= len(language.words) <= 80, language.name


@pytest.mark.parametrize("language", LANGUAGES, ids=lambda language: language.name)
def test_text_is_in_the_languages_script_and_words(language: Language) -> None:
    """An answer uses only its language's script and words, and no other language's list fits."""
    text = answer_in(language)
    scripts = letter_scripts(text)
    if language.name == "Japanese":
        assert scripts <= JAPANESE_OK
        assert "HIRAGANA" in scripts  # kana: what tells Japanese from Chinese
    else:
        assert scripts == {language.script}
    if not language.spaced:
        assert " " not in text.replace("\n\n", "")
        return
    assert coverage(text, language) == 1.0
    rivals = [(coverage(text, other), other.name) for other in LANGUAGES if other is not language]
    best_rival = max(rivals)
    assert best_rival[0] < 0.75, best_rival  # distinguishable even from close relatives


@pytest.mark.parametrize(
    ("name", "stop", "question"),
    [
        ("Hindi", "।", "?"),
        ("Nepali", "।", "?"),
        ("Bengali", "।", "?"),
        ("Chinese", "。", "？"),
        ("Japanese", "。", "？"),
        ("Arabic", ".", "؟"),
        ("Persian", ".", "؟"),
        ("Urdu", "۔", "؟"),
        ("Amharic", "።", "?"),
        ("Greek", ".", ";"),
        ("English", ".", "?"),
    ],
)
def test_sentence_punctuation_follows_the_script(name: str, stop: str, question: str) -> None:
    """Statements end with the script's full stop and questions with its question mark."""
    language = lang(name)
    composer = composer_for(language, "o200k_base")
    rng = random.Random(1)
    statement, _ = composer.statement(rng, 40)
    asked, _ = composer.question(rng, 40)
    assert statement.endswith(stop)
    assert asked.endswith(question)
    assert answer_in(language).rstrip().endswith(stop)


def test_spanish_questions_open_with_inverted_mark() -> None:
    """Spanish questions are written ¿...?."""
    asked, _ = composer_for(lang("Spanish"), "o200k_base").question(random.Random(0), 30)
    assert asked.startswith("¿")
    assert asked.endswith("?")


def test_cased_scripts_start_sentences_upper_case() -> None:
    """Latin, Cyrillic and Greek sentences begin with a capital letter."""
    for name in ("English", "Russian", "Greek", "Turkish", "Vietnamese"):
        text = answer_in(lang(name))
        assert text[0].isupper(), name


def test_rewrite_request_yields_one_or_two_instruction_sentences() -> None:
    """A "Return only the new" request gets a short question or imperative, not an essay."""
    w = writer(min_completion_tokens=20, max_completion_tokens=400)
    english = lang("English")
    endings = set()
    for i in range(40):
        req = request(("user", f"Rewrite seed {i} harder. RETURN ONLY THE NEW instruction."))
        assert w.spec_for(req).instruction
        reply = w.write(req, 400, 0, None)
        text = reply.content
        sentences = [s for s in text.replace("?", ".").split(".") if s.strip()]
        assert 1 <= len(sentences) <= 2, text
        assert reply.completion_tokens <= INSTRUCTION_TOKENS + 20
        last_word = strip_punct(text.split()[-1]).casefold()
        first_of_last = strip_punct(text.split(". ")[-1].split()[0]).casefold()
        if text.endswith("?"):
            endings.add("question")
            assert first_of_last in english.asks
        else:
            endings.add("imperative")
            assert first_of_last in english.tells or last_word in english.tells
    assert endings == {"question", "imperative"}


def test_answer_request_yields_paragraphs() -> None:
    """An answer request gets several sentences in paragraphs."""
    w = writer(min_completion_tokens=300, max_completion_tokens=400)
    reply = w.write(request(("user", "Explain tides.")), 1000, 0, None)
    assert "\n\n" in reply.content
    assert reply.content.count(".") >= 8
    assert reply.finish_reason == "stop"


def test_completion_length_is_within_bounds_and_exact() -> None:
    """Completion lengths spread over the bounds, and usage is the tiktoken count of the text."""
    w = writer(min_completion_tokens=50, max_completion_tokens=150)
    counter = TokenCounter("gpt-4o-sim")
    lengths = []
    for i in range(60):
        language = LANGUAGES[i % len(LANGUAGES)].name
        req = request(("system", f"Target language: {language}"), ("user", f"Question {i}"))
        reply = w.write(req, 400, 0, None)
        assert reply.completion_tokens == counter.count(reply.content)
        lengths.append(reply.completion_tokens)
    assert 40 <= min(lengths) < 80
    assert 120 < max(lengths) <= 170


def test_max_tokens_cuts_with_finish_reason_length() -> None:
    """A reply drawn longer than max_tokens is cut to at most max_tokens and says "length"."""
    w = writer(min_completion_tokens=200, max_completion_tokens=300)
    for name in ("English", "Chinese", "Amharic", "Hindi"):
        req = request(("user", f"Target language: {name}\nWrite an essay."), max_tokens=25)
        reply = w.write(req, 25, 0, None)
        assert reply.finish_reason == "length"
        assert 15 <= reply.completion_tokens <= 25
        assert "\ufffd" not in reply.content


def test_replies_are_a_pure_function_of_seed_and_body() -> None:
    """Same seed and body: same reply; another seed, max_tokens or request seed: another reply."""
    req = request(("user", "Target language: Tamil\nTell me about rain."))
    first = writer(seed=1).write(req, 400, 0, None)
    assert writer(seed=1).write(req, 400, 5, None).content == first.content
    assert writer(seed=2).write(req, 400, 0, None).content != first.content
    other_body = request(("user", "Target language: Tamil\nTell me about rain."), seed=9)
    assert writer(seed=1).write(other_body, 400, 0, None).content != first.content


def test_latency_follows_ttft_and_per_token_time_with_jitter() -> None:
    """total = ttft + per-token time x tokens, scaled by a jitter factor within bounds."""
    w = writer(ttft_s=0.5, per_token_s=0.01, jitter=0.2)
    for i in range(20):
        reply = w.write(request(("user", f"q{i}")), 400, i, None)
        factor = reply.ttft_s / 0.5
        assert 0.8 <= factor <= 1.2
        assert reply.total_s == pytest.approx(
            reply.ttft_s + 0.01 * reply.completion_tokens * factor
        )


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ((("user", "Target language: Hindi\nExplain."),), "Hindi"),
        ((("system", "You help.\nTarget language: Swahili"), ("user", "Explain.")), "Swahili"),
        ((("system", "Target language: French"), ("user", "target LANGUAGE:  de")), "German"),
        ((("user", "Target language: pt-BR"),), "Portuguese"),
        ((("user", "Target language: zh-Hans"),), "Chinese"),
        ((("user", "Target language: hin"),), "Hindi"),
        ((("user", "Target language: ary"),), "Moroccan Arabic"),
        ((("user", "Target language: Serbian"),), "Serbian (Cyrillic)"),
        ((("user", "Target language: Punjabi"),), "Punjabi (Gurmukhi)"),
        ((("user", "Target language: Nepali (individual language)"),), "Nepali"),
        ((("user", "Target language: Klingon"),), "English"),
        ((("user", "Explain without a language line."),), "English"),
        ((("user", "Mention the target language: Hindi in prose"),), "English"),
    ],
)
def test_target_language_line(messages: tuple[tuple[str, str], ...], expected: str) -> None:
    """The Target language line (user first, then system; name or ISO code) picks the language."""
    assert target_language(messages).name == expected


def test_every_seed_sample_language_is_known() -> None:
    """Every language of the bundled seed sample resolves to its own word list, not English."""
    names = {json.loads(line)["language"] for line in SEEDS_SAMPLE.read_text().splitlines()}
    assert len(names) >= 41
    for name in names:
        found = find_language(name)
        assert found is not None, name
        assert found is not ENGLISH or name == "English"


def test_json_is_detected_by_format_or_the_word_json() -> None:
    """JSON mode comes from response_format or "JSON" in the last user message only."""
    w = writer()
    assert w.spec_for(request(("user", "Hi"), response_format={"type": "json_object"})).json
    assert w.spec_for(request(("user", "Reply in JSON."))).json
    assert not w.spec_for(
        request(("user", "Reply in JSON."), ("assistant", "{}"), ("user", "Hi"))
    ).json
    assert not w.spec_for(request(("user", "Hi"), response_format={"type": "text"})).json


def test_json_keys_come_from_the_prompt_example() -> None:
    """A JSON example in the prompt gives the reply's keys; without one the key fits the kind."""
    assert json_keys_in('Return {"question": "...", "answer_1": "..."} now') == (
        "question",
        "answer_1",
    )
    w = writer()
    rewrite = request(("user", "Harder please. Return only the new instruction as JSON."))
    answer = request(("user", "Answer as JSON."))
    assert list(orjson.loads(w.write(rewrite, 400, 0, None).content)) == ["instruction"]
    assert list(orjson.loads(w.write(answer, 400, 0, None).content)) == ["answer"]


def test_json_schema_is_filled_with_refs_arrays_and_nullable_fields() -> None:
    """A json_schema response is a document of the schema's shape, $refs and anyOf included."""
    schema = {
        "type": "object",
        "$defs": {"turn": {"type": "object", "properties": {"role": {"enum": ["user"]}}}},
        "properties": {
            "title": {"type": "string"},
            "turns": {"type": "array", "items": {"$ref": "#/$defs/turn"}, "minItems": 2},
            "score": {"type": "number"},
            "ok": {"type": "boolean"},
            "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        },
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    req = request(("user", "Target language: Russian\nDo it."), response_format=fmt)
    value = orjson.loads(writer().write(req, 400, 0, None).content)
    assert set(value) == {"title", "turns", "score", "ok", "note"}
    assert letter_scripts(value["title"]) == {"CYRILLIC"}
    assert len(value["turns"]) >= 2
    assert all(turn == {"role": "user"} for turn in value["turns"])
    assert isinstance(value["score"], float)
    assert isinstance(value["ok"], bool)
    assert isinstance(value["note"], str)


def test_repetition_fault_text_repeats_and_wrong_language_changes_language() -> None:
    """Content faults: repetition repeats one sentence; wrong_language leaves the target."""
    w = writer(faults=FaultRates())
    req = request(("user", "Target language: Korean\nDescribe Seoul."))
    repeated = w.write(req, 400, 0, "repetition").content
    sentences = [s.strip() for s in repeated.split(".") if s.strip()]
    assert len(sentences) >= 3 and len(set(sentences)) == 1
    wrong = {w.write(req, 400, attempt, "wrong_language").language for attempt in range(8)}
    assert "Korean" not in wrong
    assert len(wrong) > 1


def test_an_independent_language_identifier_agrees() -> None:
    """py3langid names each language's answers correctly (it knows no Wolof and reads Darija
    as Arabic, so those two are judged by their word lists above)."""
    langid = pytest.importorskip("py3langid")
    wrong = []
    for language in LANGUAGES:
        if language.name in ("Wolof", "Moroccan Arabic"):
            continue
        for seed in range(3):
            code, _ = langid.classify(answer_in(language, seed, 150))
            if code != language.codes[0]:
                wrong.append((language.name, seed, code))
    assert wrong == []


def test_first_turn_of_a_translation_is_answered_in_english() -> None:
    """Under m2l's own answer prompt, a translation's first answer is the translation (English,
    as every bundled translation seed asks); later turns and other tasks keep the target."""
    from prompts.taxonomy import load_taxonomy

    answer_system = load_taxonomy().system("answer")
    w = writer()

    def system(task: str) -> tuple[str, str]:
        return ("system", answer_system.render(language="Turkish", task=task))

    first = request(system("translation"), ("user", "Şu cümleyi çevirin: «Yarın yağmur var.»"))
    assert w.spec_for(first).language is ENGLISH
    assert w.write(first, 400, 0, None).language == "English"
    later = request(
        system("translation"), ("user", "Çevirin."), ("assistant", "Rain."), ("user", "Neden?")
    )
    assert w.spec_for(later).language.name == "Turkish"
    other = request(system("open_qa"), ("user", "Neden gökyüzü mavi?"))
    assert w.spec_for(other).language.name == "Turkish"
    rewrite = request(system("translation"), ("user", "Çevirin. Return only the new one."))
    assert w.spec_for(rewrite).language.name == "Turkish"
