"""Seed files in the exact shapes of the Aya Dataset and the Aya Collection, with realistic values.

The Aya Dataset (human-written prompts): inputs, targets, language (English name as Aya spells it,
e.g. "Standard Arabic"), language_code (ISO 639-3, e.g. "arb"), annotation_type, user_id.
The Aya Collection (templated and translated datasets): id, inputs, targets, dataset_name,
sub_dataset_name, task_type (coarse: "question-answering", "generation", "-", ...), template_id,
language (ISO 639-3 code), script, split. Both are written as JSONL or Parquet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# (Aya's language name, ISO 639-3 code, script) and a few sentences in that language.
LANGUAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "arb": (
        "Standard Arabic",
        "Arab",
        (
            "ما هي عاصمة المغرب؟",
            "اشرح لماذا تتساقط أوراق الأشجار في الخريف.",
            "لخص النص التالي في جملتين.",
            "من كتب رواية موسم الهجرة إلى الشمال؟",
        ),
    ),
    "ary": (
        "Moroccan Arabic",
        "Arab",
        (
            "شنو هي أحسن طريقة باش نطيب الكسكس؟",
            "علاش الناس كيحبو يمشيو للبحر فالصيف؟",
            "عطيني ثلاثة ديال النصائح باش نتعلم الفرنسية.",
            "شكون اللي بنا صومعة حسان؟",
        ),
    ),
    "yor": (
        "Yoruba",
        "Latn",
        (
            "Kí ni olú ìlú Nàìjíríà?",
            "Ṣàlàyé ìdí tí òjò fi ń rọ̀ ní àkókò òjò.",
            "Kọ ewì kúkúrú nípa ọjà Ìbàdàn.",
            "Ta ni Ọbásanjọ́?",
        ),
    ),
    "eng": (
        "English",
        "Latn",
        (
            "Why do the leaves of many trees turn red in autumn?",
            "Summarize the following news article in two sentences.",
            "Who wrote the novel Things Fall Apart?",
            "Explain the joke: why did the scarecrow win an award?",
        ),
    ),
    "hin": (
        "Hindi",
        "Deva",
        (
            "भारत की राजधानी क्या है?",
            "प्रकाश संश्लेषण की प्रक्रिया को सरल शब्दों में समझाइए।",
            "इस वाक्य को दो छोटे वाक्यों में बाँटिए।",
            "गीतांजलि किसने लिखी?",
        ),
    ),
    "swh": (
        "Swahili",
        "Latn",
        (
            "Mji mkuu wa Kenya ni upi?",
            "Eleza kwa nini bahari ina chumvi.",
            "Andika hadithi fupi kuhusu sungura mjanja.",
            "Nani aliandika kitabu cha Utenzi wa Mwana Kupona?",
        ),
    ),
}

# (dataset_name as the Aya Collection spells it, its coarse task_type, the m2l task it should get)
COLLECTION_DATASETS: tuple[tuple[str, str, str], ...] = (
    ("AdversarialQA", "question-answering", "extractive_qa"),
    ("MLQA-en (T)", "question-answering", "extractive_qa"),
    ("WIKI QA", "question-answering", "extractive_qa"),
    ("HotpotQA", "question-answering", "multihop_qa"),
    ("Flan-Coqa", "question-answering", "conversational_qa"),
    ("NQ-Open", "question-answering", "open_qa"),
    ("Flan-unified-QA", "question-answering", "open_qa"),
    ("Mintaka-inst", "question-answering", "entity_linking"),
    ("CNN-Daily-Mail", "summarization", "summarization"),
    ("Flan-GEM-wiki-lingua", "summarization", "summarization"),
    ("Dolly-v2", "generation", "general"),
    ("Flan-CoT-submix", "generation", "chain_of_thought"),
    ("Flan-lambada", "generation", "cloze"),
    ("Joke-explaination", "generation", "humor_explanation"),
    ("PAWS-Wiki", "paraphrase-identification", "paraphrase_identification"),
    ("PIQA", "question-answering", "commonsense_reasoning"),
    ("Wiki-split-inst", "text-simplification", "text_simplification"),
    ("Xlel_wd-inst", "event-linking", "entity_linking"),
    ("SODA-inst", "dialogue", "general"),
    ("xcsqa", "question-answering", "commonsense_reasoning"),
    ("masakhanews", "classification", "text_classification"),
    # Not in the built-in table: task_type decides, else the default task.
    ("NTX-LLM", "-", "general"),
    ("Ukranian GEC", "paraphrasing", "general"),
    ("Thai USEmbassy", "translation", "translation"),
)

UNKNOWN_SOURCES = ("NTX-LLM", "Ukranian GEC", "Thai USEmbassy")


def collection_rows(per_cell: int = 2, codes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Aya Collection rows: per_cell distinct rows for each (language, dataset)."""
    rows: list[dict[str, Any]] = []
    for code in codes or LANGUAGES:
        _, script, sentences = LANGUAGES[code]
        for d, (name, task_type, _) in enumerate(COLLECTION_DATASETS):
            translated = "(T)" in name or d % 2 == 0
            for i in range(per_cell):
                text = sentences[(d + i) % len(sentences)]
                rows.append(
                    {
                        "id": len(rows) + 1,
                        "inputs": f"{text} [{name} #{i}]",
                        "targets": f"{sentences[(d + i + 1) % len(sentences)]} ({i})",
                        "dataset_name": name,
                        "sub_dataset_name": "-",
                        "task_type": task_type,
                        "template_id": 0 if translated else 1 + i % 3,
                        "language": code,
                        "script": script,
                        "split": "train",
                    }
                )
    return rows


def dataset_rows(per_language: int = 5, codes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Aya Dataset rows: human-written prompts with Aya's language names and codes."""
    rows: list[dict[str, Any]] = []
    for code in codes or LANGUAGES:
        name, _, sentences = LANGUAGES[code]
        for i in range(per_language):
            rows.append(
                {
                    "inputs": f"{sentences[i % len(sentences)]} ({i})",
                    "targets": sentences[(i + 1) % len(sentences)],
                    "language": name,
                    "language_code": code,
                    "annotation_type": "original-annotations",
                    "user_id": f"{i:04x}a9c1e",
                }
            )
    return rows


def write(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSONL or Parquet, by the path's suffix."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(list(rows)), path)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path
