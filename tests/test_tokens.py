"""Offline token counting: OpenAI's encodings, the model table and chat overhead."""

from __future__ import annotations

import logging

import pytest

from engine.chat import ChatRequest
from engine.errors import ConfigError
from engine.tokens import TokenCounter, encoding_for_model, get_encoding


@pytest.mark.parametrize(
    ("encoding", "text", "ids"),
    [
        # Token ids published by OpenAI's tiktoken for these encodings.
        ("cl100k_base", "hello world", [15339, 1917]),
        ("o200k_base", "hello world", [24912, 2375]),
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
    ],
)
def test_encodings_match_openai_ids(encoding: str, text: str, ids: list[int]) -> None:
    """The offline encodings produce OpenAI's own token ids."""
    assert get_encoding(encoding).encode(text) == ids


def test_encoding_loads_once_per_process() -> None:
    """get_encoding is cached: the same object comes back."""
    assert get_encoding("o200k_base") is get_encoding("o200k_base")


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
    ],
)
def test_model_table(model: str, encoding: str) -> None:
    """Known model names map to their encodings, longest prefix first."""
    assert encoding_for_model(model) == encoding


def test_unknown_model_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown model falls back to the configured encoding with one warning."""
    with caplog.at_level(logging.WARNING):
        assert encoding_for_model("llama-3-70b-unknown-x") == "o200k_base"
        assert encoding_for_model("llama-3-70b-unknown-x", unknown="o200k_base") == "o200k_base"
    warnings = [r for r in caplog.records if "llama-3-70b-unknown-x" in r.getMessage()]
    assert len(warnings) == 1
    assert encoding_for_model("mistral-unknown-y", unknown="cl100k_base") == "cl100k_base"


def test_unknown_encoding_is_a_config_error() -> None:
    """Asking for an encoding m2l does not ship names the ones it has."""
    with pytest.raises(ConfigError, match="cl100k_base"):
        get_encoding("p50k_base")


def test_chat_overhead_matches_openai_cookbook() -> None:
    """Chat prompt tokens = 3 per message + role + content, + 3 to prime the reply."""
    counter = TokenCounter("gpt-4")
    messages = (
        counter.message("system", "You are a helpful assistant."),
        counter.message("user", "Hello, how are you?"),
    )
    # Cookbook: 6 content tokens + 6 role/framing tokens... computed by hand below.
    enc = get_encoding("cl100k_base")
    expected = 3 + sum(
        3 + len(enc.encode(r)) + len(enc.encode(c))
        for r, c in (("system", "You are a helpful assistant."), ("user", "Hello, how are you?"))
    )
    request = ChatRequest(messages=messages, max_tokens=50)
    assert request.prompt_tokens == expected
    assert request.charge == expected + 50


def test_multilingual_text_counts() -> None:
    """Non-Latin scripts are counted, and o200k is no less efficient than cl100k on them."""
    text = "नमस्ते, आप कैसे हैं? 今日はいい天気ですね。 Как дела?"
    cl = TokenCounter("gpt-4").count(text)
    o2 = TokenCounter("gpt-4o").count(text)
    assert 0 < o2 <= cl
