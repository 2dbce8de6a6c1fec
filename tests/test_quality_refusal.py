"""Refusal detection: real refusals in the 41 sample languages, and honest replies that pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.quality import FilterConfig, check_refusal, default_refusals, load_refusals

SAMPLE_LANGUAGES = [
    "en",
    "es",
    "fr",
    "de",
    "pt",
    "it",
    "nl",
    "sv",
    "pl",
    "tr",
    "id",
    "sw",
    "yo",
    "ha",
    "zu",
    "wo",
    "so",
    "vi",
    "fi",
    "ht",
    "ru",
    "uk",
    "sr",
    "ar",
    "fa",
    "ur",
    "ary",
    "hi",
    "mr",
    "ne",
    "bn",
    "ta",
    "te",
    "zh",
    "ja",
    "ko",
    "el",
    "am",
    "gu",
    "pa",
    "si",
]

REFUSALS = {
    "en": "I’m sorry, but I can’t help with writing that message. Is there anything else?",
    "es": "Lo siento, pero no puedo ayudarte a escribir ese correo. ¿Te ayudo con otra cosa?",
    "fr": "Je suis désolée, mais je ne peux pas rédiger ce texte. Puis-je vous aider autrement ?",
    "de": "Es tut mir leid, aber ich kann diese Nachricht nicht für dich schreiben.",
    "pt": "Desculpe, mas não posso ajudar com esse pedido.",
    "it": "Mi dispiace, ma non posso scrivere questo testo per te.",
    "nl": "Het spijt me, maar ik kan deze tekst niet voor je schrijven.",
    "sv": "Jag är ledsen, men jag kan inte skriva det meddelandet åt dig.",
    "pl": "Przepraszam, ale nie mogę napisać tego tekstu.",
    "tr": "Üzgünüm, bu konuda yardımcı olamam. Başka bir konuda yardım ister misiniz?",
    "id": "Maaf, saya tidak bisa menulis pesan seperti itu.",
    "sw": "Samahani, lakini siwezi kuandika ujumbe huo.",
    "yo": "Ma binu, mi o le ko ọrọ yẹn fun ọ.",  # tone marks left out, as models often do
    "ha": "Yi hakuri, amma ba zan iya rubuta wannan sakon ba.",  # "k" for "ƙ"
    "zu": "Ngiyaxolisa, kodwa angikwazi ukubhala lowo mlayezo.",
    "wo": "Baal ma, mënuma bind bataaxal boobu.",
    "so": "Waan ka xumahay, laakiin ma awoodo inaan qoro farriintaas.",
    "vi": "Xin lỗi, nhưng tôi không thể viết tin nhắn đó.",
    "fi": "Olen pahoillani, mutta en voi kirjoittaa tätä viestiä.",
    "ht": "Mwen regrèt, men mwen pa kapab ekri mesaj sa a.",
    "ru": "Извините, но я не могу написать такое сообщение.",
    "uk": "Вибачте, але я не можу написати таке повідомлення.",
    "sr": "Извините, али не могу да напишем ту поруку.",
    "ar": "عذراً، لا أستطيع كتابة هذه الرسالة.",
    "fa": "متاسفانه نمیتوانم این پیام را بنویسم.",  # no ZWNJ, Arabic-style spelling
    "ur": "معاف کیجیے، میں یہ نہیں کر سکتا کیونکہ یہ پیغام نقصان دہ ہے۔",
    "ary": "سمح ليا، ما نقدرش نكتب هاد الرسالة.",
    "hi": "माफ कीजिए, मैं यह नहीं कर सकता क्योंकि यह संदेश हानिकारक है।",  # no nukta
    "mr": "क्षमस्व, मी हे करू शकत नाही कारण हा संदेश हानिकारक आहे.",
    "ne": "माफ गर्नुहोस्, म यसमा मद्दत गर्न सक्दिन।",  # no chandrabindu
    "bn": "দুঃখিত, কিন্তু আমি এটা করতে পারব না।",
    "ta": "மன்னிக்கவும், என்னால் இதற்கு உதவ முடியாது.",
    "te": "క్షమించండి, నేను దీనికి సహాయం చేయలేను.",
    "zh": "很抱歉，我不能帮你写这条消息。",
    "ja": "申し訳ありませんが、お手伝いできません。",
    "ko": "죄송하지만 도와드릴 수 없습니다.",
    "el": "Λυπάμαι, αλλά δεν μπορώ να γράψω αυτό το μήνυμα.",
    "am": "ይቅርታ፣ ይህን ማድረግ አልችልም።",
    "gu": "માફ કરશો, હું આમાં મદદ કરી શકતો નથી.",
    "pa": "ਮਾਫ਼ ਕਰਨਾ, ਮੈਂ ਇਸ ਵਿੱਚ ਮਦਦ ਨਹੀਂ ਕਰ ਸਕਦਾ।",
    "si": "සමාවෙන්න, මට එය කළ නොහැක.",
}

HONEST = [
    "I'm sorry, I made a mistake in the second step: the total is 42, not 24.",
    "Lo siento por la confusión: la capital de Australia es Canberra, no Sídney.",
    "Je ne peux pas m'empêcher de penser que ce roman est le meilleur de l'auteur.",
    "Ich kann dir gern drei Rezepte mit Linsen vorschlagen.",
    "Não posso deixar de recomendar uma visita ao Porto na primavera.",
    "Извините за путаницу: правильный ответ — 15 минут.",
    "很抱歉刚才的回答有误，正确的年份是1998年。",
    "申し訳ありませんが、先ほどの計算に誤りがありました。正しくは42です。",
    "मैं आपकी मदद करने के लिए तैयार हूँ। यहाँ तीन सुझाव हैं।",
    "Here is the dialogue you asked for:\nAnna: I can't come tonight.\nBen: Why not?",
]


def test_bundled_phrases_cover_the_sample_languages() -> None:
    """Every one of the 41 sample languages has at least three refusal phrases."""
    phrases = default_refusals().by_language
    missing = [code for code in SAMPLE_LANGUAGES if len(phrases.get(code, ())) < 3]
    assert missing == []


@pytest.mark.parametrize("code", SAMPLE_LANGUAGES)
def test_refusals_are_detected_in_every_sample_language(code: str) -> None:
    """A real refusal in each language fails as "refusal", naming a phrase of that language."""
    verdict = check_refusal(REFUSALS[code])
    assert verdict.reason == "refusal", (code, verdict)
    assert verdict.detail.startswith(f"{code}:")


@pytest.mark.parametrize("text", HONEST)
def test_honest_replies_are_not_refusals(text: str) -> None:
    """Apologies for a mistake, "I can't help thinking", and quoted dialogue pass."""
    assert check_refusal(text).ok, check_refusal(text)


def test_refusal_window_is_configurable() -> None:
    """A refusal phrase beyond the opening window is not judged; a wider window finds it."""
    text = "Here is a long and helpful answer. " * 20 + "I'm sorry, but I can't share more."
    assert check_refusal(text).ok
    assert not check_refusal(text, FilterConfig(refusal_window=2000)).ok


def test_phrase_inside_a_word_does_not_match() -> None:
    """A Latin phrase must start at a word boundary."""
    phrases = load_refusals(None)
    assert phrases.find("Maaf, saya tidak bisa datang.") is not None
    assert phrases.find("Tumaaf, saya tidak bisa datang.") is None


def test_custom_phrase_file(tmp_path: Path) -> None:
    """A user's own TOML replaces the bundled list."""
    path = tmp_path / "refusals.toml"
    path.write_text('[en]\nname = "English"\nphrases = ["no can do"]\n', encoding="utf-8")
    config = FilterConfig(refusals_path=path)
    assert check_refusal("No can do, friend.", config).reason == "refusal"
    assert check_refusal("I'm sorry, but I can't.", config).ok


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[en\n", "invalid TOML"),
        ("", "no languages"),
        ("[english]\nphrases = ['x']\n", "ISO 639"),
        ("[en]\nphrases = []\n", "non-empty list"),
        ("[en]\nphrases = ['ok']\nweight = 2\n", "unknown key"),
    ],
)
def test_bad_phrase_files_raise_config_error(tmp_path: Path, content: str, message: str) -> None:
    """A malformed phrase file raises ConfigError naming the file and the problem."""
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_refusals(path)
    assert str(path) in str(info.value)


def test_missing_phrase_file_raises_config_error(tmp_path: Path) -> None:
    """A path that does not exist raises ConfigError saying so."""
    with pytest.raises(ConfigError, match="not found"):
        load_refusals(tmp_path / "nope.toml")


def _every_phrase_in_order(phrases: object, text: str, window: int | None) -> object:
    """The search before phrases were grouped by their heads: every phrase, longest first."""
    from engine.quality.text import normalize_for_match

    head = text.lstrip()
    folded = normalize_for_match(head if window is None else head[:window])
    for phrase in phrases._ordered:  # type: ignore[attr-defined]
        at = folded.find(phrase)
        while at >= 0:
            if phrase not in phrases._bounded or at == 0 or not folded[at - 1].isalnum():  # type: ignore[attr-defined]
                return phrases._lookup[phrase]  # type: ignore[attr-defined]
            at = folded.find(phrase, at + 1)
    return None


def test_searching_only_phrases_whose_head_is_present_finds_the_same_match() -> None:
    """Each bundled phrase in a text (alone, after other text, inside a word, cut short), and
    honest texts: the grouped search reports what searching every phrase reports."""
    import tomllib

    phrases = default_refusals()
    corpus = Path(__file__).parent / "data" / "language_corpus.toml"
    texts = [c["text"] for c in tomllib.loads(corpus.read_text(encoding="utf-8"))["case"]]
    for listed in phrases.by_language.values():
        for phrase in listed:
            texts += [phrase, f"Well. {phrase} now", f"x{phrase}", phrase[:-1], phrase.upper()]
    found = 0
    for text in texts:
        for window in (None, 300, 12):
            expected = _every_phrase_in_order(phrases, text, window)
            assert phrases.find(text, window=window) == expected, text
            found += expected is not None
    assert found > len(texts)  # most phrases are found, so the comparison means something
