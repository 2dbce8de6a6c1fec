"""The M2Lingual release schema, as one pyarrow schema, and its Hugging Face features form.

ServiceNow-AI/M2Lingual's card declares ``id`` and ``no_of_turns`` as int32; its Parquet files
hold ``multiturn_evol_prompt`` as a list of one-key {TYPE: prompt} records, stored (as
``datasets`` stores a list of dicts) as a list of structs with one field per multi-turn type,
only the row's own type set. The export writes exactly this schema and checks each Parquet file
it writes against it; the dataset card's ``features`` are rendered from it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prompts.taxonomy import load_taxonomy

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DEFAULT_MULTITURN_TYPES",
    "RELEASE_COLUMNS",
    "SUBSETS",
    "features_yaml",
    "multiturn_types_for",
    "quality_fields",
    "release_schema",
]

# The card's column order.
RELEASE_COLUMNS = (
    "id",
    "task_evol_type",
    "task_evol_prompt",
    "seed_prompt",
    "output_assistant_reply",
    "evolved_user_prompt",
    "multiturn_evol_type",
    "multiturn_evol_prompt",
    "no_of_turns",
    "language",
    "task",
    "evolved_multiturn_prompt",
    "conversation",
)

# The release's three subsets and what each holds (the card's meaning).
SUBSETS = {
    "seed_data": "the selected seeds as they are: seed instruction and its source response",
    "seed_evol_data": "one Guided Evol pair per conversation: evolved instruction and its answer",
    "full_data": "everything: the seeds, the evolved pairs and the multi-turn conversations",
}


@functools.cache
def release_schema(multiturn_types: tuple[str, ...]) -> pa.Schema:
    """The release schema whose multiturn_evol_prompt records have these type fields."""
    # pyarrow is imported on first use: it costs about a second of start-up in every command
    # (and every test subprocess), and only exports and dataset cards need it.
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    prompt_record = pa.struct([(t, pa.string()) for t in multiturn_types])
    types = {
        "id": pa.int32(),
        "multiturn_evol_type": pa.list_(pa.string()),
        "multiturn_evol_prompt": pa.list_(prompt_record),
        "no_of_turns": pa.int32(),
        "evolved_multiturn_prompt": pa.list_(pa.string()),
        "conversation": pa.list_(message),
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in RELEASE_COLUMNS])


def quality_fields() -> list[pa.Field]:
    """The columns ``--quality-fields`` adds after the format's own (and filter_reason): planned
    and made turns, why a conversation is short, and every output thrown away making it."""
    import pyarrow as pa

    rejected = pa.struct(
        [
            ("step", pa.int64()),
            ("regeneration", pa.int64()),
            ("kind", pa.string()),
            ("reason", pa.string()),
            ("content", pa.string()),
        ]
    )
    return [
        pa.field("turns_planned", pa.int64()),
        pa.field("turns_made", pa.int64()),
        pa.field("kept_reason", pa.string()),
        pa.field("rejected", pa.list_(rejected)),
    ]


DEFAULT_MULTITURN_TYPES: tuple[str, ...] = tuple(e.id for e in load_taxonomy().of_kind("multiturn"))


def multiturn_types_for(used: Iterable[str]) -> tuple[str, ...]:
    """The record fields for a run: the built-in types in taxonomy order, then others it used."""
    extra = sorted(set(used) - set(DEFAULT_MULTITURN_TYPES))
    return (*DEFAULT_MULTITURN_TYPES, *extra)


def _feature(name: str, dtype: pa.DataType, pad: str) -> list[str]:
    import pyarrow as pa

    if pa.types.is_list(dtype):
        inner = dtype.value_type
        if pa.types.is_struct(inner):
            lines = [f"{pad}- name: {name}", f"{pad}  list:"]
            for field in inner:
                lines += _feature(field.name, field.type, pad + "  ")
            return lines
        return [f"{pad}- name: {name}", f"{pad}  list: {_dtype(inner)}"]
    return [f"{pad}- name: {name}", f"{pad}  dtype: {_dtype(dtype)}"]


def _dtype(dtype: pa.DataType) -> str:
    import pyarrow as pa

    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_integer(dtype):
        return str(dtype)  # int32, int64
    raise ValueError(f"no dataset card dtype for {dtype}")


def features_yaml(schema: pa.Schema | Sequence[pa.Field], indent: int = 0) -> list[str]:
    """The schema as the ``features:`` list of a Hugging Face dataset card, one line each."""
    pad = " " * indent
    lines: list[str] = []
    for field in schema:
        lines += _feature(field.name, field.type, pad)
    return lines
