"""Small real runs for tests: a seed file and a config that talk to the embedded simulator."""

from __future__ import annotations

from pathlib import Path

import orjson

SEEDS = [
    ("Explain why the sky looks blue at noon and red at sunset.", "English", "eng", "open_qa"),
    (
        "Write a short poem about the monsoon arriving in a small town.",
        "English",
        "eng",
        "creative_writing",
    ),
    (
        "¿Cuáles son las causas principales de la inflación en una economía?",
        "Spanish",
        "spa",
        "open_qa",
    ),
    (
        "Resume en dos frases la historia de la independencia de México.",
        "Spanish",
        "spa",
        "summarization",
    ),
    ("Eleza kwa ufupi jinsi mvua inavyonyesha.", "Swahili", "swh", "open_qa"),
    ("Andika hadithi fupi kuhusu simba na panya.", "Swahili", "swh", "creative_writing"),
    ("बताइए कि पौधे प्रकाश संश्लेषण कैसे करते हैं।", "Hindi", "hin", "open_qa"),
    ("दिल्ली के मौसम के बारे में एक छोटा अनुच्छेद लिखिए।", "Hindi", "hin", "creative_writing"),
]


def write_seeds(path: Path, rows: int | None = None) -> Path:
    items = SEEDS if rows is None else SEEDS[:rows]
    with path.open("wb") as f:
        for text, language, code, task in items:
            f.write(
                orjson.dumps(
                    {
                        "inputs": text,
                        "targets": "",
                        "language": language,
                        "language_code": code,
                        "task_type": task,
                    }
                )
                + b"\n"
            )
    return path


def write_config(
    folder: Path,
    *,
    name: str = "t",
    extra: str = "",
    faults: str = "",
    evols_per_seed: int = 1,
    sim: str = "",
    ttft_s: float = 0.0,
    per_token_s: float = 0.0,
) -> Path:
    """A config for a fast simulated run; ``extra``/``sim``/``faults`` add TOML lines."""
    write_seeds(folder / "seeds.jsonl")
    path = folder / "m2l.toml"
    path.write_text(
        f"""
[run]
name = "{name}"
output_dir = "runs"
seed = 3
max_active = 16
grace_s = 5

[seeds]
file = "seeds.jsonl"
evols_per_seed = {evols_per_seed}

[provider]
kind = "sim"
model = "gpt-4o-mini"
read_timeout_s = 2.0

[generation]
max_tokens = {{ evolve = 64, answer = 128, follow_up = 64 }}

[retry]
base_delay_s = 0.01
max_delay_s = 0.05

{extra}

[sim]
seed = 11
ttft_s = {ttft_s}
per_token_s = {per_token_s}
jitter = 0.0
min_completion_tokens = 12
max_completion_tokens = 60
hang_s = 5.0
{sim}

[sim.faults]
{faults}
"""
    )
    return path
