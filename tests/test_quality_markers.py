"""Leaked markers: template text, chat tokens, disclaimers, placeholders and role labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.quality import FilterConfig, check_markers, load_markers


@pytest.mark.parametrize(
    ("text", "kind", "marker"),
    [
        ("Target language: Spanish\n¿Cuál es la capital de Perú?", "template", "target language:"),
        (
            "Rewritten instruction: Explain photosynthesis to a ten-year-old in three sentences.",
            "label",
            "rewritten instruction",
        ),
        ("#Given Prompt#\nWrite a poem about rain.", "template", "#given prompt#"),
        ("Return only the new instruction. Describe Lagos in 50 words.", "template", None),
        ("La respuesta es 42.<|im_end|>", "template", "<|im_end|>"),
        ("As an AI language model, I do not have personal opinions.", "disclaimer", None),
        ("Bien sûr. En tant que modèle de langage, je n'ai pas d'avis.", "disclaimer", None),
        ("作为一个人工智能语言模型，我没有个人观点。", "disclaimer", None),
        ("Translate this into {language} please: good morning.", "placeholder", "{language}"),
        ("Rewrite the following: {{ seed }}", "placeholder", "{seed}"),
        (
            "Sure, here it is.\nUser: And what about Mars?\nAssistant: Mars has two moons.",
            "role_label",
            "user",
        ),
        ("Voici la réponse.\n**Utilisateur :** et ensuite ?", "role_label", "utilisateur"),
        ("好的。\n用户：那火星呢？", "role_label", "用户"),
    ],
)
def test_leaks_are_found(text: str, kind: str, marker: str | None) -> None:
    """Each kind of leak fails as "leaked_markers" and the detail names it."""
    verdict = check_markers(text, instruction=kind == "label")
    assert verdict.reason == "leaked_markers", verdict
    assert verdict.detail.startswith(kind)
    if marker is not None:
        assert repr(marker) in verdict.detail


@pytest.mark.parametrize(
    "text",
    [
        "The capital of Peru is Lima, a city of about ten million people.",
        "GPT-4 acts as a language model that predicts the next token.",
        'Use an f-string:\n```python\nprint(f"Hello, {language}!")\n```\nIt prints the name.',
        "Call `format(seed)` with `{seed}` inline code to fill the template.",
        "Requirements:\nSystem: Windows 10 or later\nMemory: 8 GB",
        "The user interface has a menu. The assistant manager approves requests.",
        "Here is a dialogue:\nAnna: Hi!\nBen: Hello, Anna.",
    ],
)
def test_honest_replies_have_no_markers(text: str) -> None:
    """Code, ordinary words like "user", and dialogues with names are not leaks."""
    assert check_markers(text).ok, check_markers(text)


def test_role_labels_can_be_switched_off() -> None:
    """With role_labels off, a "User:" line passes (for tasks that ask for transcripts)."""
    text = "Example transcript:\nUser: Hi\nAssistant: Hello"
    assert not check_markers(text).ok
    assert check_markers(text, FilterConfig(role_labels=False)).ok


def test_extra_markers_from_config() -> None:
    """Phrases added in the config are leaks too, folded for case and accents."""
    config = FilterConfig(extra_markers=("Variación de diálogo:",))
    text = "VARIACION DE DIALOGO: pregunta de seguimiento"
    assert check_markers(text, config).reason == "leaked_markers"
    assert check_markers(text).ok


def test_custom_marker_file(tmp_path: Path) -> None:
    """A user's own TOML replaces the bundled lists."""
    path = tmp_path / "markers.toml"
    path.write_text('template = ["<<OUR-TEMPLATE>>"]\n', encoding="utf-8")
    config = FilterConfig(markers_path=path)
    assert not check_markers("text <<our-template>> text", config).ok
    assert check_markers("As an AI language model, I think so.", config).ok


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("template = [\n", "invalid TOML"),
        ("templates = ['x']\n", "unknown key"),
        ("template = 'x'\n", "list of non-empty strings"),
        ("role_labels = ['']\n", "list of non-empty strings"),
    ],
)
def test_bad_marker_files_raise_config_error(tmp_path: Path, content: str, message: str) -> None:
    """A malformed marker file raises ConfigError naming the file and the problem."""
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_markers(path)
    assert str(path) in str(info.value)
