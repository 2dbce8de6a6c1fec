"""The M2Lingual method as data: the Evol taxonomy, the language table and their loaders."""

from __future__ import annotations

from prompts.languages import (
    DEFAULT_LANGUAGES_PATH,
    Language,
    LanguageTable,
    Tier,
    UnknownLanguage,
    load_languages,
)
from prompts.taxonomy import (
    ALLOWED_PLACEHOLDERS,
    DEFAULT_TAXONOMY_DIR,
    KINDS,
    REWRITE_MARKER,
    TARGET_LANGUAGE_LINE,
    Kind,
    PromptEntry,
    Task,
    Taxonomy,
    load_taxonomy,
)

__all__ = [
    "ALLOWED_PLACEHOLDERS",
    "DEFAULT_LANGUAGES_PATH",
    "DEFAULT_TAXONOMY_DIR",
    "KINDS",
    "REWRITE_MARKER",
    "TARGET_LANGUAGE_LINE",
    "Kind",
    "Language",
    "LanguageTable",
    "PromptEntry",
    "Task",
    "Taxonomy",
    "Tier",
    "UnknownLanguage",
    "load_languages",
    "load_taxonomy",
]
