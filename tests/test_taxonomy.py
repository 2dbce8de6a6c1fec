"""The Evol taxonomy: the built-in data validates, malformed data is reported precisely, CLI."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from engine.app.prompts import add_prompts_parser
from engine.errors import ConfigError
from prompts.taxonomy import (
    DEFAULT_TAXONOMY_DIR,
    ENTRY_FILES,
    KINDS,
    REWRITE_MARKER,
    TARGET_LANGUAGE_LINE,
    TASKS_FILE,
    PromptEntry,
    load_taxonomy,
)

SEEDS = Path(__file__).resolve().parents[1] / "examples" / "seeds.jsonl"

REQUIRED_TASKS = [
    "open_qa",
    "extractive_qa",
    "multihop_qa",
    "conversational_qa",
    "summarization",
    "paraphrase_identification",
    "nli",
    "commonsense_reasoning",
    "sentiment_analysis",
    "ner",
    "text_simplification",
    "cloze",
    "chain_of_thought",
    "humor_explanation",
    "entity_linking",
    "creative_writing",
    "translation",
    "math",
    "general",
]
RELEASED_MULTITURN = [
    "REFOCUS_QUERIES",
    "RECALL_INFORMATION",
    "FEEDBACK_HANDLING_FOLLOW_UP",
    "PERSONA_REWRITING_FOLLOW_UP",
    "CLARIFICATION",
    "GENERIC_REWRITING_FOLLOW_UP",
    "OPEN_ENDED_QUESTIONS",
    "AMBIGUOUS_FOLLOW_UP",
    "COMPLEX_QUERIES",
    "REDIRECTION_FOLLOW_UP",
    "CHALLENGING_FOLLOW_UP",
    "RANDOM_FOLLOW_UP",
    "PRONOUNS",
]
REQUIRED_GENERAL = [
    "ADD_CONSTRAINT",
    "DEEPEN",
    "CONCRETIZE",
    "INCREASE_REASONING_STEPS",
    "DIALECT",
    "CULTURAL_GROUNDING",
    "CONCISENESS",
    "CODE_MIXING",
]


# --- the built-in taxonomy ------------------------------------------------------------------------


def test_builtin_taxonomy_has_the_required_tasks() -> None:
    """At least 17 tasks plus `general`, including every task the issue names."""
    tax = load_taxonomy()
    assert set(REQUIRED_TASKS) <= set(tax.tasks)
    assert len(set(tax.tasks) - {"general"}) >= 17


def test_every_task_has_nine_evol_ways_with_three_task_specific() -> None:
    """Each task gets the general conditions plus at least three task-specific transformations."""
    tax = load_taxonomy()
    for task_id in tax.tasks:
        found = tax.evol_types(task_id)
        assert len(found) >= 9, task_id
        assert sum(e.kind == "evol_task" for e in found) >= 3, task_id
        assert [e.kind for e in found] == sorted((e.kind for e in found), key=KINDS.index)


def test_general_conditions_include_the_required_ones() -> None:
    """Step 1 holds the eight task-agnostic conditions of the issue, applicable to every task."""
    tax = load_taxonomy()
    general = {e.id: e for e in tax.of_kind("evol_general")}
    assert set(REQUIRED_GENERAL) <= set(general)
    assert all(general[i].tasks == ("*",) for i in REQUIRED_GENERAL)


def test_multiturn_has_21_types_in_four_families() -> None:
    """Multi-turn Evol has 21 types in the four families, including the 13 released names."""
    tax = load_taxonomy()
    multiturn = tax.multiturn_types()
    assert len(multiturn) == 21
    assert tax.families() == ("follow_up", "refinement", "expansion", "recollection")
    assert set(RELEASED_MULTITURN) <= {e.id for e in multiturn}
    assert sum(len(tax.multiturn_types(f)) for f in tax.families()) == 21
    assert all(e.family == "recollection" for e in tax.multiturn_types("recollection"))
    assert tax.multiturn_types(task="nli") == multiturn


def test_every_template_follows_the_shared_conventions() -> None:
    """Each prompt has the target-language line; rewrites say 'Return only the new'."""
    for entry in load_taxonomy().entries:
        lines = [line.strip() for line in entry.template.splitlines()]
        assert TARGET_LANGUAGE_LINE in lines, entry.id
        assert (REWRITE_MARKER in entry.template) == (entry.kind != "answer"), entry.id
        assert entry.description and "\n" not in entry.description, entry.id


def test_rendered_prompts_carry_the_language_line_for_the_simulator() -> None:
    """After rendering, a prompt has the line 'Target language: <name>' that the simulator reads."""
    tax = load_taxonomy()
    values = {
        "seed": "Wat is de hoofdstad van Nederland?",
        "language": "Dutch",
        "task": "open-domain question answering",
        "conversation": "User: a\n\nAssistant: b",
        "last_user": "a",
        "last_assistant": "b",
    }
    for entry in tax.entries:
        text = entry.render(**values)
        assert "Target language: Dutch" in text.splitlines(), entry.id
        assert "{" not in text, entry.id


def test_answer_system_prompt_names_the_language() -> None:
    """The answer system prompt tells the model to answer in the conversation's language."""
    entry = load_taxonomy().answer_system()
    assert entry.kind == "answer"
    text = entry.render(language="Wolof", task="translation")
    assert "Target language: Wolof" in text and "reply in Wolof" in text


def test_render_reports_missing_values_and_keeps_literal_braces() -> None:
    """render() names the entry and the missing placeholder; `{{ }}` come out as braces."""
    entry = PromptEntry("X", "evol_general", "f", "d", "{{json}} {seed} in {language}", ("*",))
    assert entry.render(seed="S", language="L", unused="ignored") == "{json} S in L"
    with pytest.raises(ConfigError, match=r"prompt 'X' .*\{language\}"):
        entry.render(seed="S")


@pytest.mark.parametrize(
    ("alias", "task_id"),
    [
        ("question-answering", "open_qa"),
        ("summarization", "summarization"),
        ("paraphrase-identification", "paraphrase_identification"),
        ("natural-language-inference", "nli"),
        ("text-simplification", "text_simplification"),
        ("translation", "translation"),
        ("sentiment-analysis", "sentiment_analysis"),
        ("named-entity-recognition", "ner"),
        ("generation", "general"),
        ("text-classification", "text_classification"),
        ("Chain of Thought", "chain_of_thought"),
        ("NLI", "nli"),
    ],
)
def test_aya_task_types_map_to_our_tasks(alias: str, task_id: str) -> None:
    """Aya Collection task_type strings and ids in any case resolve to our task ids."""
    assert load_taxonomy().task(alias).id == task_id


def test_unknown_task_and_entry_suggest_close_names() -> None:
    """Unknown task and prompt ids raise ConfigError with a 'did you mean' hint."""
    tax = load_taxonomy()
    with pytest.raises(ConfigError, match=r"did you mean 'summarization'"):
        tax.task("summarisaton")
    with pytest.raises(ConfigError, match=r"did you mean 'PRONOUNS'"):
        tax.get("PRONUNS")
    with pytest.raises(ConfigError, match="families are"):
        tax.multiturn_types("small_talk")
    assert tax.get("pronouns").id == "PRONOUNS"


def test_default_is_cached_and_fingerprint_tracks_file_bytes(tmp_path: Path) -> None:
    """The built-in taxonomy is cached; a copy has its fingerprint until a file's bytes change."""
    assert load_taxonomy() is load_taxonomy(DEFAULT_TAXONOMY_DIR)
    copy = _copy(tmp_path)
    assert load_taxonomy(copy).fingerprint == load_taxonomy().fingerprint
    path = copy / ENTRY_FILES["answer"]
    path.write_text(path.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    changed = load_taxonomy(copy)
    assert changed.fingerprint != load_taxonomy().fingerprint
    assert changed.source == copy


# --- malformed taxonomies ------------------------------------------------------------------------


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "taxonomy"
    target.mkdir()
    for name in (TASKS_FILE, *ENTRY_FILES.values()):
        shutil.copy(DEFAULT_TAXONOMY_DIR / name, target / name)
    return target


TEMPLATE = """template = '''
Rewrite it.
{seed}
Target language: {language}
Return only the new instruction, written in {language}, with no preamble.
'''
"""


def _entry(entry_id: str, *, template: str = TEMPLATE, **keys: str) -> str:
    fields = {"family": '"depth"', "description": '"A test entry."', "tasks": '["*"]', **keys}
    body = "".join(f"{k} = {v}\n" for k, v in fields.items() if v != "")
    return f'\n[[prompt]]\nid = "{entry_id}"\n{body}{template}'


CASES = [
    # (case, file to append to, text appended, words the error must contain)
    (
        "unknown placeholder",
        "evol_general.toml",
        _entry("BAD_PLACEHOLDER", template=TEMPLATE.replace("{seed}", "{seed} {answer}")),
        ["evol_general.toml", "'BAD_PLACEHOLDER'", "'template'", "unknown placeholder {answer}"],
    ),
    (
        "placeholder of another kind",
        "answer.toml",
        "",  # replaced below: the answer prompt may not use {seed}
        ["answer.toml", "'ANSWER_IN_LANGUAGE'", "'template'", "unknown placeholder {seed}"],
    ),
    (
        "duplicate id across files",
        "evol_task.toml",
        _entry("DEEPEN", tasks='["nli"]'),
        ["evol_task.toml", "'DEEPEN'", "'id'", "duplicate id", "evol_general.toml"],
    ),
    (
        "missing key",
        "multiturn.toml",
        _entry("NO_DESCRIPTION", description=""),
        ["multiturn.toml", "'NO_DESCRIPTION'", "'description'", "missing"],
    ),
    (
        "wrong type for tasks",
        "evol_task.toml",
        _entry("TASKS_AS_STRING", tasks='"nli"'),
        ["evol_task.toml", "'TASKS_AS_STRING'", "'tasks'", "expected a list"],
    ),
    (
        "wrong type for family",
        "evol_task.toml",
        _entry("FAMILY_AS_NUMBER", family="3", tasks='["nli"]'),
        ["evol_task.toml", "'FAMILY_AS_NUMBER'", "'family'", "expected a non-empty string"],
    ),
    (
        "unknown task in tasks",
        "evol_task.toml",
        _entry("TYPO_TASK", tasks='["nlii"]'),
        ["evol_task.toml", "'TYPO_TASK'", "'tasks'", "unknown task 'nlii'", "did you mean 'nli'"],
    ),
    (
        "task with too few evol ways",
        "tasks.toml",
        '\n[[task]]\nid = "poetry_scansion"\nname = "poetry scansion"\ndescription = "Scan."\n',
        ["evol_task.toml", "'poetry_scansion'", "'tasks'", "fewer than min_evols_per_task=9"],
    ),
    (
        "bad TOML syntax",
        "multiturn.toml",
        '\n[[prompt]]\nid = "BROKEN"\nfamily = "follow_up"\ndescription = "unterminated\n',
        ["multiturn.toml", "'BROKEN'", "'description'", "invalid TOML"],
    ),
    (
        "missing target-language line",
        "evol_general.toml",
        _entry("NO_LANGUAGE_LINE", template=TEMPLATE.replace("Target language: {language}\n", "")),
        ["evol_general.toml", "'NO_LANGUAGE_LINE'", "'template'", "Target language: {language}"],
    ),
    (
        "rewrite prompt without the rewrite marker",
        "evol_general.toml",
        _entry("NO_MARKER", template=TEMPLATE.replace("Return only the new", "Give the")),
        ["evol_general.toml", "'NO_MARKER'", "'template'", "Return only the new"],
    ),
    (
        "unbalanced brace",
        "evol_general.toml",
        _entry("LONE_BRACE", template=TEMPLATE.replace("Rewrite it.", "Rewrite {it.")),
        ["evol_general.toml", "'LONE_BRACE'", "'template'", "literal braces"],
    ),
    (
        "unknown key",
        "evol_general.toml",
        _entry("EXTRA_KEY", weight="2"),
        ["evol_general.toml", "'EXTRA_KEY'", "'weight'", "unknown key"],
    ),
    (
        "alias claimed by two tasks",
        "tasks.toml",
        '\n[[task]]\nid = "qa_again"\nname = "qa"\ndescription = "Q."\naliases = ["qa"]\n',
        ["tasks.toml", "'qa_again'", "'aliases'", "already names task 'open_qa'"],
    ),
]


@pytest.mark.parametrize(
    ("case", "filename", "appended", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_malformed_taxonomy_names_file_entry_and_key(
    tmp_path: Path, case: str, filename: str, appended: str, words: list[str]
) -> None:
    """Each kind of mistake raises ConfigError naming the file, the entry id and the key."""
    root = _copy(tmp_path)
    path = root / filename
    text = path.read_text(encoding="utf-8")
    if case == "placeholder of another kind":
        text = text.replace("answering a user in {language}.", "answering {seed} in {language}.")
    path.write_text(text + appended, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_taxonomy(root)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


def test_min_evols_per_task_is_configurable(tmp_path: Path) -> None:
    """Raising the minimum above what the data has fails; lowering it accepts a sparse task."""
    with pytest.raises(ConfigError, match="fewer than min_evols_per_task=40"):
        load_taxonomy(min_evols_per_task=40)
    root = _copy(tmp_path)
    tasks = root / TASKS_FILE
    extra = '\n[[task]]\nid = "scansion"\nname = "scansion"\ndescription = "Scan verse."\n'
    tasks.write_text(tasks.read_text(encoding="utf-8") + extra, encoding="utf-8")
    tax = load_taxonomy(root, min_evols_per_task=8)
    assert len(tax.evol_types("scansion")) == 8


def test_missing_file_and_directory_are_reported(tmp_path: Path) -> None:
    """A directory without one of the five files, or no directory at all, is a ConfigError."""
    root = _copy(tmp_path)
    (root / ENTRY_FILES["multiturn"]).unlink()
    with pytest.raises(ConfigError, match=r"multiturn\.toml: missing"):
        load_taxonomy(root)
    with pytest.raises(ConfigError, match="taxonomy directory not found"):
        load_taxonomy(tmp_path / "absent")


# --- CLI -----------------------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="m2l")
    add_prompts_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prompts", *argv])
    code: int = args.func(args)
    return code


def test_cli_list_filters_by_kind_and_task(capsys: pytest.CaptureFixture[str]) -> None:
    """`prompts list --kind evol_task --task math` shows only math's task-specific types."""
    assert _run(["list", "--kind", "evol_task", "--task", "math"]) == 0
    out = capsys.readouterr().out
    assert "MATH_INVERSE" in out and "COT_FIND_THE_FLAW" in out
    assert "NLI_HARD_NEGATIVES" not in out and "ADD_CONSTRAINT" not in out


def test_cli_list_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    """`prompts list --kind task` shows the tasks table."""
    assert _run(["list", "--kind", "task"]) == 0
    out = capsys.readouterr().out
    assert "paraphrase_identification" in out and "20 tasks" in out


def test_cli_show_renders_with_a_real_seed(capsys: pytest.CaptureFixture[str]) -> None:
    """`prompts show ID --seed-file F --row N` renders the template with that seed row."""
    first = SEEDS.read_text(encoding="utf-8").splitlines()[0]
    assert _run(["show", "DIALECT", "--seed-file", str(SEEDS), "--row", "0"]) == 0
    out = capsys.readouterr().out
    assert "Target language: English" in out
    assert "Why do the leaves of many trees turn yellow" in out and "Why do the leaves" in first
    rendered = out.split("rendered with row 0", 1)[1]
    assert "{seed}" not in rendered and "{language}" not in rendered


def test_cli_show_language_override_and_multiturn(capsys: pytest.CaptureFixture[str]) -> None:
    """--language overrides the row's language; multi-turn types get a transcript from the row."""
    assert _run(["show", "PRONOUNS", "--seed-file", str(SEEDS), "--language", "yo"]) == 0
    out = capsys.readouterr().out
    assert "Target language: Yoruba" in out and "User: Why do the leaves" in out
    assert "Assistant: As days shorten" in out


def test_cli_show_without_seed_prints_the_template(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --seed-file, show prints the raw template with its placeholders."""
    assert _run(["show", "clarification"]) == 0
    assert "{conversation}" in capsys.readouterr().out


def test_cli_reads_parquet_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Parquet seed file in the Aya shape renders like JSON Lines."""
    import duckdb

    path = tmp_path / "seeds.parquet"
    duckdb.connect().execute(
        "COPY (SELECT 'Ni nini maana ya Hakuna matata?' AS inputs, 'Hakuna shida' AS targets, "
        "'swh' AS language_code, 'question-answering' AS task_type) TO '" + str(path) + "' "
        "(FORMAT parquet)"
    )
    assert _run(["show", "QA_MULTI_HOP", "--seed-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Target language: Swahili" in out and "Hakuna matata" in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["show", "NOPE_NOT_A_TYPE"], "unknown prompt type"),
        (["show", "DEEPEN", "--seed-file", str(SEEDS), "--row", "100000"], "has no row 100000"),
        (["show", "DEEPEN", "--seed-file", "/nonexistent/seeds.jsonl"], "seed file not found"),
        (
            ["show", "DEEPEN", "--seed-file", str(SEEDS), "--language", "xx-lang"],
            "unknown language",
        ),
        (["list", "--task", "astrology"], "unknown task 'astrology'"),
        (["list", "--taxonomy", "/nonexistent/taxonomy"], "taxonomy directory not found"),
    ],
)
def test_cli_errors_exit_2_with_a_message(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad ids, rows, files, languages or directories exit with 2 and say what is wrong."""
    assert _run(argv) == 2
    assert words in capsys.readouterr().err


def test_cli_list_is_readable_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    """Piped (or under 130 columns): no box drawing, lines within 80 columns, whole descriptions."""
    assert _run(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert not set(out) & set("┃│┏━…")
    taxonomy = load_taxonomy()
    joined = " ".join(" ".join(lines).split())
    for entry in taxonomy.entries:
        assert f"  {entry.id}" in out
        assert entry.description in joined  # wrapped, never cut
    assert "multiturn / refinement" in out
    assert _run(["list", "--kind", "task"]) == 0
    tasks = capsys.readouterr().out
    assert all(len(line) <= 80 for line in tasks.splitlines()) and "  open_qa  (" in tasks
