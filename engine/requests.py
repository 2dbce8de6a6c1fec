"""The Python face of ``m2l requests``: OpenAI-shaped request dicts in, results out in order.

    from engine import requests as m2l_requests

    results = await m2l_requests.run(
        [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}, ...],
        budget_usd=2.0,
    )
    for r in results:
        print(r.content if r.ok else r.error)

It is the command's job, with the same limiter, retries, budget and adaptive concurrency: the
dicts are written to a JSONL file in a working folder, sent, and the results read back. Give
``folder`` to keep that folder, and a killed program resumes where it stopped when it calls
``run`` again with the same dicts and folder; without it a temporary folder is used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import orjson

from engine.config import RequestsConfig, load_requests_config
from engine.errors import BudgetExhausted, M2LError
from engine.events import EventHook
from engine.requestjob import JobReport, RequestJob

__all__ = ["RequestResult", "run"]

_KEY_VARIABLE = "M2L_REQUESTS_API_KEY"  # the facade's own: a key given as an argument


@dataclass(frozen=True, slots=True)
class RequestResult:
    """One request's outcome: the whole reply object, or the error it failed with for good."""

    index: int  # its place among the requests given
    response: Mapping[str, Any] | None
    error: Mapping[str, Any] | None  # {"class", "status", "message"}
    metadata: Any = None
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def content(self) -> str | None:
        """The first choice's text (None for a failed request or a reply without text)."""
        if self.response is None:
            return None
        try:
            content = self.response["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else None


async def run(
    requests: Iterable[Mapping[str, Any]],
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    simulator: bool = False,
    rpm: float | None = None,
    tpm: float | None = None,
    max_inflight: int | Literal["auto"] | None = None,
    max_tokens: int | None = None,
    budget_usd: float | None = None,
    budget_tokens: int | None = None,
    config: RequestsConfig | Path | None = None,
    folder: Path | str | None = None,
    hooks: EventHook | None = None,
    env: Mapping[str, str] | None = None,
) -> list[RequestResult]:
    """Send every request; their results in the order given.

    ``api_key`` (else the variable ``provider.api_key_env`` of ``env``, the process
    environment by default) is used for this call only and never written anywhere. Arguments
    override ``config`` (a RequestsConfig, or a TOML file as ``m2l requests --config`` reads).
    Raises ConfigError for a bad request (naming its index) or setting, BudgetExhausted when a
    cap stopped the job before every request had a result, M2LError when it could not go on.
    """
    environment: dict[str, str] = dict(env if env is not None else _os_environ())
    overrides: dict[str, Any] = {
        "provider": {"base_url": base_url, "model": model, "kind": "sim" if simulator else None},
        "limits": {"rpm": rpm, "tpm": tpm, "max_inflight": max_inflight},
        "requests": {"max_tokens": max_tokens},
        "budget": {"usd": budget_usd, "tokens": budget_tokens},
    }
    if api_key is not None:
        overrides["provider"]["api_key_env"] = _KEY_VARIABLE
        environment[_KEY_VARIABLE] = api_key
    settings = _settings(config, overrides)
    data = b"".join(orjson.dumps(dict(r)) + b"\n" for r in requests)
    if folder is not None:
        return await _run_in(Path(folder), data, settings, environment, hooks)
    with tempfile.TemporaryDirectory(prefix="m2l-requests-") as tmp:
        return await _run_in(Path(tmp), data, settings, environment, hooks)


def _settings(config: RequestsConfig | Path | None, overrides: dict[str, Any]) -> RequestsConfig:
    """The config with the arguments that were given on top, checked as one."""
    given = {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in overrides.items()
    }
    if not isinstance(config, RequestsConfig):
        return load_requests_config(config, {k: v for k, v in given.items() if v})
    data = config.snapshot()
    for section, values in given.items():
        data.setdefault(section, {}).update(values)
    return load_requests_config(None, data)


async def _run_in(
    folder: Path,
    data: bytes,
    config: RequestsConfig,
    env: Mapping[str, str],
    hooks: EventHook | None,
) -> list[RequestResult]:
    src, out = folder / "requests.jsonl", folder / "results.jsonl"
    await anyio.to_thread.run_sync(_write_input, src, data)
    report = await RequestJob(config, src, out, env=env, hooks=hooks).run()
    _raise_for(report)
    return await anyio.to_thread.run_sync(_read_results, out)


def _write_input(src: Path, data: bytes) -> None:
    src.parent.mkdir(parents=True, exist_ok=True)
    if not (src.exists() and src.read_bytes() == data):
        src.write_bytes(data)  # a resumed call with the same requests keeps its file as it is


def _read_results(out: Path) -> list[RequestResult]:
    results = []
    with out.open("rb") as f:
        for index, raw in enumerate(f):
            line = orjson.loads(raw)
            results.append(
                RequestResult(
                    index,
                    line.get("response"),
                    line.get("error"),
                    line.get("metadata"),
                    float(line.get("cost_usd") or 0.0),
                )
            )
    return results


def _raise_for(report: JobReport) -> None:
    if report.status == "finished":
        return
    if report.status == "budget_exhausted":
        raise BudgetExhausted(f"{report.message} ({report.ok + report.failed} of {report.total})")
    raise M2LError(f"the requests stopped before they all had a result: {report.message}")


def _os_environ() -> Mapping[str, str]:
    from engine.config import environment

    return environment()
