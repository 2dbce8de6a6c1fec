"""Measure what a language costs in tokens per letter with OpenAI's real tokenizers, and write
``prompts/data/token_cost.toml``, which scales each step's default max_tokens by language.

The sample is real text: the seed instructions of ``examples/seeds.jsonl`` (and their reference
answers where those are in the seed's language) plus the should-pass texts of the labelled
language corpus ``tests/data/language_corpus.toml``. Letters are weighted as the language check
weighs them (a Han or kana character as 3, a Hangul syllable as 2), so a script that packs a
word into one character is not charged as if each character were a word. Languages with no
sample get the average of their script. Usage::

    .venv/bin/python bench/token_cost.py            # print the table and rewrite the data file
    .venv/bin/python bench/token_cost.py --check    # print only
"""

from __future__ import annotations

import argparse
import json
import statistics
import tomllib
from collections import defaultdict
from pathlib import Path

from engine.quality.langid import weighted_letters
from engine.tokens import get_encoding
from prompts.languages import load_languages

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "prompts" / "data" / "token_cost.toml"
ENCODINGS = ("o200k_base", "cl100k_base")


def samples() -> dict[str, list[str]]:
    """Texts per ISO 639-3 code of the language table."""
    table = load_languages()
    out: dict[str, list[str]] = defaultdict(list)
    for line in (ROOT / "examples" / "seeds.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        lang = table.get(row.get("language_code") or row["language"])
        if lang is None:
            continue
        out[lang.iso639_3].append(row["inputs"])
        if row.get("task_type") != "translation" and row.get("targets"):
            out[lang.iso639_3].append(row["targets"])
    corpus = ROOT / "tests" / "data" / "language_corpus.toml"
    if corpus.exists():
        for case in tomllib.loads(corpus.read_text(encoding="utf-8"))["case"]:
            if case["expect"] == "pass" and case.get("pure", False):
                lang = table.lookup(case["language"])
                out[lang.iso639_3].append(case["text"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="print only; do not write the file")
    args = parser.parse_args()
    table = load_languages()
    encodings = {name: get_encoding(name) for name in ENCODINGS}
    per_language: dict[str, dict[str, float]] = {}
    letters_of: dict[str, int] = {}
    for code, texts in sorted(samples().items()):
        letters = sum(weighted_letters(t) for t in texts)
        if letters < 100:
            continue
        letters_of[code] = letters
        per_language[code] = {
            name: sum(len(enc.encode(t)) for t in texts) / letters
            for name, enc in encodings.items()
        }
    per_script: dict[str, dict[str, float]] = {}
    by_script: dict[str, list[str]] = defaultdict(list)
    for lang in table:
        if lang.iso639_3 in per_language:
            by_script[lang.script].append(lang.iso639_3)
    for script, codes in sorted(by_script.items()):
        per_script[script] = {
            name: statistics.fmean(per_language[c][name] for c in codes) for name in ENCODINGS
        }
    english = per_language["eng"]
    lines = [
        "# Tokens per weighted letter, measured by bench/token_cost.py with OpenAI's tokenizers",
        "# on real text (examples/seeds.jsonl and tests/data/language_corpus.toml). Regenerate",
        "# it with `.venv/bin/python bench/token_cost.py`; do not edit by hand. A step's default",
        "# max_tokens is scaled by a language's cost over English's (never below 1).",
        "",
        "[language]",
    ]
    print(f"{'code':6} {'letters':>8} " + " ".join(f"{n:>12}" for n in ENCODINGS) + "  vs en")
    for code, costs in per_language.items():
        ratio = costs["o200k_base"] / english["o200k_base"]
        print(
            f"{code:6} {letters_of[code]:8} "
            + " ".join(f"{costs[n]:12.3f}" for n in ENCODINGS)
            + f"  {ratio:5.2f}"
        )
        values = ", ".join(f"{n} = {costs[n]:.4f}" for n in ENCODINGS)
        lines.append(f"{code} = {{ {values}, letters = {letters_of[code]} }}")
    lines += ["", "[script]"]
    for script, costs in per_script.items():
        values = ", ".join(f"{n} = {costs[n]:.4f}" for n in ENCODINGS)
        lines.append(f'"{script}" = {{ {values} }}')
    if not args.check:
        OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
