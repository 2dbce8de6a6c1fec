"""``m2l requests`` end to end: a real simulator on loopback, a real DuckDB file, the real CLI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from engine.app.cli import main
from engine.chat import REPLY_PRIMING_TOKENS
from engine.config import load_requests_config
from engine.events import RequestSent
from engine.requestjob import JobReport, RequestJob, state_dir_for
from engine.simsettings import SimSettings
from engine.simulator import run_simulator
from engine.tokens import TokenCounter
from state.requestlog import spend_total
from tests.badserver import bad_server

FAST = {"ttft_s": 0.0, "per_token_s": 0.0, "jitter": 0.0}
KEY = "sk-test-abcdefghijklmnopqrstuvwxyz0123"


def body(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Say hello number {i} in French."}],
        "max_tokens": 30,
        "metadata": {"i": i},
        **extra,
    }


def write_lines(path: Path, rows: Sequence[Mapping[str, Any] | str]) -> Path:
    path.write_bytes(
        b"".join((r.encode() if isinstance(r, str) else orjson.dumps(r)) + b"\n" for r in rows)
    )
    return path


def read_out(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def run_job(
    tmp_path: Path,
    rows: Sequence[Mapping[str, Any] | str],
    *,
    base_url: str,
    env: Mapping[str, str] | None = None,
    **sections: Mapping[str, Any],
) -> tuple[JobReport, Path]:
    src = write_lines(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    overrides: dict[str, dict[str, Any]] = {
        "provider": {"base_url": base_url},
        "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05},
        "requests": {"grace_s": 5.0},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    config = load_requests_config(None, overrides)
    report = await RequestJob(config, src, out, env=env or {}).run()
    return report, out


@pytest.mark.anyio
async def test_every_line_answered_once_in_input_order_with_its_metadata(tmp_path: Path) -> None:
    """Results come back one per non-blank line, in input order, with metadata passed through
    and the whole reply object; the state sits beside the output."""
    rows: list[Mapping[str, Any] | str] = [body(i) for i in range(60)]
    rows.insert(10, "   ")  # a blank line: no result, but line numbers stay the file's
    async with run_simulator(SimSettings(**FAST)) as sim:  # type: ignore[arg-type]
        report, out = await run_job(tmp_path, rows, base_url=sim.base_url)
    assert report.status == "finished"
    assert (report.total, report.ok, report.failed, report.written) == (60, 60, 0, 60)
    got = read_out(out)
    assert [r["metadata"]["i"] for r in got] == list(range(60))
    assert [r["line"] for r in got] == [*range(1, 11), *range(12, 62)]
    assert all(r["error"] is None for r in got)
    assert all(r["response"]["choices"][0]["message"]["content"] for r in got)
    assert all(r["response"]["usage"]["completion_tokens"] <= 30 for r in got)
    assert (state_dir_for(out) / "state.duckdb").is_file()


def reply(content: str) -> bytes:
    return orjson.dumps(
        {
            "id": "x",
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        }
    )


@pytest.mark.anyio
async def test_429s_are_retried_until_every_line_is_answered(tmp_path: Path) -> None:
    """A provider that answers 429 (with Retry-After) to every third request: each is sent
    again after the pause, every line ends answered, and the 429s are on record."""

    def answer(auth: str, count: int) -> tuple[int, bytes, dict[str, str]]:
        if count % 3 == 0:
            error = {"error": {"message": "Rate limit reached", "type": "requests"}}
            return 429, orjson.dumps(error), {"Retry-After": "0.05"}
        return 200, reply(f"answer {count}"), {}

    async with bad_server(answer) as url:
        report, out = await run_job(
            tmp_path, [body(i) for i in range(30)], base_url=url, limits={"max_inflight": 8}
        )
    assert report.status == "finished" and report.ok == 30
    with duckdb.connect(str(state_dir_for(out) / "state.duckdb"), read_only=True) as conn:
        rate_limited = conn.execute(
            "SELECT count(*) FROM requests WHERE error_class = 'rate_limited'"
        ).fetchone()
    assert rate_limited is not None and rate_limited[0] >= 10
    assert [r["metadata"]["i"] for r in read_out(out)] == list(range(30))
    assert all(r["error"] is None for r in read_out(out))


@pytest.mark.anyio
async def test_a_request_the_server_refuses_gets_its_error_in_its_own_line(
    tmp_path: Path,
) -> None:
    """A request past the context window fails for good: its line holds the error, the job
    goes on and finishes."""
    rows = [body(0), body(1), body(2)]
    rows[1] = {**rows[1], "messages": [{"role": "user", "content": "word " * 400}]}
    settings = SimSettings(context_window=300, **FAST)  # type: ignore[arg-type]
    async with run_simulator(settings) as sim:
        report, out = await run_job(tmp_path, rows, base_url=sim.base_url)
    assert report.status == "finished" and (report.ok, report.failed) == (2, 1)
    got = read_out(out)
    assert got[1]["response"] is None and got[1]["metadata"] == {"i": 1}
    assert got[1]["error"]["class"] == "context_length_exceeded"
    assert got[1]["error"]["status"] == 400
    assert got[0]["error"] is None and got[2]["error"] is None


@pytest.mark.anyio
async def test_the_budget_cap_holds_and_a_raised_cap_finishes_the_job(tmp_path: Path) -> None:
    """Under a USD cap the job stops before passing it, with part of the file written in order;
    run again with a higher cap, it sends only the rest and every line appears once."""
    rows = [body(i, max_tokens=200) for i in range(50)]
    cap = 0.004  # gpt-4o-mini: ~0.12 mc a request at worst, so about 30 requests fit
    async with run_simulator(SimSettings(**FAST)) as sim:  # type: ignore[arg-type]
        first, out = await run_job(
            tmp_path, rows, base_url=sim.base_url, budget={"usd": cap}, limits={"max_inflight": 4}
        )
        assert first.status == "budget_exhausted"
        assert 0 < first.ok < 50 and first.written <= first.ok
        with duckdb.connect(str(state_dir_for(out) / "state.duckdb"), read_only=True) as conn:
            money, _, _ = spend_total(conn, per_usd=10**9)
        assert money <= cap * 10**9
        partial = read_out(out)
        assert [r["metadata"]["i"] for r in partial] == list(range(len(partial)))
        second, out = await run_job(
            tmp_path, rows, base_url=sim.base_url, budget={"usd": 1.0}, limits={"max_inflight": 4}
        )
    assert second.status == "finished" and second.ok == 50
    assert [r["metadata"]["i"] for r in read_out(out)] == list(range(50))
    with duckdb.connect(str(state_dir_for(out) / "state.duckdb"), read_only=True) as conn:
        answered = conn.execute("SELECT count(*) FROM requests WHERE status = 'ok'").fetchone()
    assert answered == (50,)  # nothing answered twice


@pytest.mark.anyio
async def test_a_key_a_server_echoes_reaches_neither_output_nor_state(tmp_path: Path) -> None:
    """A server that puts the Authorization header into its reply (and its errors) leaves no
    trace of the key in the output file or the state file."""

    def answer(auth: str, count: int) -> tuple[int, bytes, dict[str, str]]:
        if count % 2:
            echoed = orjson.loads(reply(f"you sent {auth}"))
            echoed["echo"] = {"headers": {"Authorization": auth}}
            return 200, orjson.dumps(echoed), {}
        return 400, orjson.dumps({"error": {"message": f"bad header {auth}"}}), {}

    async with bad_server(answer) as url:
        report, out = await run_job(
            tmp_path,
            [body(i) for i in range(6)],
            base_url=url,
            env={"OPENAI_API_KEY": KEY},
            limits={"max_inflight": 1},
        )
    assert report.status == "finished" and report.ok + report.failed == 6
    assert report.failed > 0
    text = out.read_bytes()
    assert b"you sent" in text and KEY.encode() not in text
    assert KEY[8:].encode() not in text
    for path in state_dir_for(out).iterdir():
        if path.is_file():
            assert KEY[8:].encode() not in path.read_bytes(), path


# --- bad input: one clear line, exit 2, nothing made ---------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["requests", *args, "--quiet"])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ([body(0), "{not json"], "in.jsonl:2: not valid JSON"),
        ([body(0), body(1), {"model": "gpt-4o"}], "in.jsonl:3: the body has no messages"),
        (
            [{"model": "my-model", "messages": [{"role": "user", "content": "a"}]}],
            "in.jsonl:1: unknown model 'my-model'",
        ),
        (["", "  "], "holds no request"),
    ],
)
def test_bad_input_gets_one_line_naming_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list[Any], says: str
) -> None:
    """A malformed line, a body without messages, a model m2l cannot price under a USD cap:
    one error line naming the file and the line, exit 2, and no output or state made."""
    src = write_lines(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    code, err = cli(capsys, str(src), str(out), "--sim", "--budget-usd", "1")
    assert code == 2
    assert says in err
    assert err.startswith("m2l: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists() and not state_dir_for(out).exists()


def test_output_in_a_missing_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output path whose folder does not exist: one line naming it, nothing created."""
    src = write_lines(tmp_path / "in.jsonl", [body(0)])
    code, err = cli(capsys, str(src), str(tmp_path / "nope" / "out.jsonl"), "--sim")
    assert code == 2 and "nope" in err and "does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "nope").exists()


def test_an_output_of_another_input_or_of_no_job_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing output made from another input, or not by m2l at all, is refused as it is."""
    first = write_lines(tmp_path / "a.jsonl", [body(0), body(1)])
    out = tmp_path / "out.jsonl"
    code, err = cli(capsys, str(first), str(out), "--sim", "--config", str(_fast_config(tmp_path)))
    assert code == 0, err
    before = out.read_bytes()
    other = write_lines(tmp_path / "b.jsonl", [body(5)])
    code, err = cli(capsys, str(other), str(out), "--sim")
    assert code == 2 and "made from another input" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("my own notes\n")
    code, err = cli(capsys, str(first), str(foreign), "--sim")
    assert code == 2 and "already exists" in err and foreign.read_text() == "my own notes\n"


def test_a_bad_option_value_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flags go through the config types' checks: a negative limit is one clear line."""
    src = write_lines(tmp_path / "in.jsonl", [body(0)])
    code, err = cli(capsys, str(src), str(tmp_path / "o.jsonl"), "--sim", "--rpm", "-5")
    assert code == 2 and "limits.rpm" in err and "-5" in err
    code, err = cli(capsys, str(src), str(tmp_path / "o.jsonl"), "--sim", "--price", "x=1")
    assert code == 2 and "--price" in err


def test_no_key_for_openai_is_refused_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sending to OpenAI without the key variable set stops at once and says how to fix it."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    src = write_lines(tmp_path / "in.jsonl", [body(0)])
    code, err = cli(capsys, str(src), str(tmp_path / "o.jsonl"))
    assert code == 2 and "OPENAI_API_KEY" in err and "--sim" in err


def _fast_config(folder: Path) -> Path:
    path = folder / "fast.toml"
    path.write_text("[sim]\nttft_s = 0.0\nper_token_s = 0.0\n")
    return path


@pytest.mark.anyio
async def test_python_facade_takes_openai_dicts_and_returns_results_in_order(
    tmp_path: Path,
) -> None:
    """``engine.requests.run`` sends OpenAI-shaped dicts and gives each result back in order;
    called again on the same folder it sends nothing twice."""
    from engine import requests as m2l_requests

    bodies = [body(i) for i in range(12)]
    bodies[5] = {**bodies[5], "messages": [{"role": "user", "content": "word " * 400}]}
    settings = SimSettings(context_window=300, **FAST)  # type: ignore[arg-type]
    async with run_simulator(settings) as sim:
        results = await m2l_requests.run(
            bodies, base_url=sim.base_url, api_key=KEY, folder=tmp_path / "job"
        )
        again = await m2l_requests.run(
            bodies, base_url=sim.base_url, api_key=KEY, folder=tmp_path / "job"
        )
    assert [r.index for r in results] == list(range(12))
    assert [r.metadata for r in results] == [{"i": i} for i in range(12)]
    assert [r.ok for r in results] == [i != 5 for i in range(12)]
    assert results[0].content and results[5].content is None
    assert results[5].error is not None and results[5].error["class"] == "context_length_exceeded"
    assert again == results
    with duckdb.connect(str(tmp_path / "job" / "results.jsonl.m2l" / "state.duckdb")) as conn:
        sent = conn.execute("SELECT count(*) FROM requests").fetchone()
    assert sent == (12,)
    assert (
        KEY[8:].encode()
        not in (tmp_path / "job" / "results.jsonl.m2l" / "state.duckdb").read_bytes()
    )


@pytest.mark.anyio
async def test_a_token_cap_holds_too(tmp_path: Path) -> None:
    """Under budget.tokens the job stops before the request log passes the cap."""
    rows = [body(i, max_tokens=100) for i in range(30)]
    async with run_simulator(SimSettings(**FAST)) as sim:  # type: ignore[arg-type]
        report, out = await run_job(
            tmp_path, rows, base_url=sim.base_url, budget={"tokens": 1500},
            limits={"max_inflight": 4},
        )  # fmt: skip
    assert report.status == "budget_exhausted" and 0 < report.ok < 30
    with duckdb.connect(str(state_dir_for(out) / "state.duckdb"), read_only=True) as conn:
        _, tokens, _ = spend_total(conn, per_usd=10**9)
    assert tokens <= 1500


def test_each_line_is_priced_at_its_own_models_price() -> None:
    """A file naming two models: a request's worst case and its reply's cost use the price
    of its own line's model."""
    import contextvars

    from budgets.prices import Pricing, load_price_table, resolve_price
    from engine.chat import Usage
    from engine.requestfile import parse_line
    from engine.requestjob import _LINE_MODEL, _ModelCosts
    from engine.tokens import TokenCounter

    table = load_price_table()
    prices = {m: resolve_price(m, table) for m in ("gpt-4o", "gpt-4o-mini")}
    costs = _ModelCosts({m: Pricing(p) for m, p in prices.items() if p is not None})
    counter = TokenCounter("gpt-4o")

    def line(model: str) -> Any:
        return parse_line(
            orjson.dumps(body(0, model=model)), index=0, line_no=1, default_model=model,
            default_max_tokens=10, counters=lambda _m: counter,
        )  # fmt: skip

    big, small = line("gpt-4o"), line("gpt-4o-mini")
    assert costs.worst_case(big.request) > 10 * costs.worst_case(small.request) > 0
    usage = Usage(1000, 1000)

    def priced(model: str) -> float:
        _LINE_MODEL.set(model)
        return costs.actual(usage)

    big_cost = contextvars.copy_context().run(priced, "gpt-4o")
    small_cost = contextvars.copy_context().run(priced, "gpt-4o-mini")
    assert big_cost > 10 * small_cost > 0


class _Sent:
    """Collects the prompt tokens each request was charged with when it went out."""

    def __init__(self) -> None:
        self.charged: dict[str, int] = {}

    def on_event(self, event: object) -> None:
        if isinstance(event, RequestSent):
            self.charged[event.key] = event.prompt_tokens


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sections", "sim_limits", "exact"),
    [
        ({}, {}, "none"),  # nothing reads the count: a bound counted for free
        ({"limits": {"tpm": 10_000_000}}, {}, "all"),  # the limiter charges it
        ({"budget": {"tokens": 10_000_000}}, {}, "all"),  # a cap holds it
        # A limit learned from the first reply's headers (one line read at a time).
        ({"requests": {"max_active": 1}}, {"tpm": 10_000_000}, "after-first"),
    ],
)
async def test_lines_are_counted_exactly_whenever_a_limit_a_cap_or_a_price_uses_the_count(
    tmp_path: Path, sections: dict[str, Any], sim_limits: dict[str, int], exact: str
) -> None:
    """An unpriced model with no token limit or cap is charged a byte bound (never fewer than
    its tokens); a configured token limit, a cap, or a limit the server's headers teach makes
    every line sent from then on counted exactly. The log keeps the server's usage either way."""
    text = "Grüße aus Köln, und 你好 — say hello in French, please."
    rows = [
        {"model": "local-model", "messages": [{"role": "user", "content": f"{text} {i}"}]}
        for i in range(6)
    ]
    counter = TokenCounter("local-model")
    exact_counts = [
        REPLY_PRIMING_TOKENS + counter.message("user", f"{text} {i}").tokens for i in range(6)
    ]
    sent = _Sent()
    settings = SimSettings(**FAST, **sim_limits)  # type: ignore[arg-type]
    async with run_simulator(settings) as sim:
        src = write_lines(tmp_path / "in.jsonl", rows)
        overrides: dict[str, dict[str, Any]] = {"provider": {"base_url": sim.base_url}}
        for name, values in sections.items():
            overrides.setdefault(name, {}).update(values)
        config = load_requests_config(None, overrides)
        report = await RequestJob(config, src, tmp_path / "out.jsonl", env={}, hooks=sent).run()
    assert report.status == "finished"
    charged = [sent.charged[f"{i}:0"] for i in range(6)]
    wanted = {"none": [], "all": list(range(6)), "after-first": list(range(1, 6))}[exact]
    for i in range(6):
        if i in wanted:
            assert charged[i] == exact_counts[i]
        else:
            assert charged[i] > exact_counts[i]  # the bound: more than the tokens, never fewer
    with duckdb.connect(str(state_dir_for(tmp_path / "out.jsonl") / "state.duckdb")) as conn:
        logged = conn.execute("SELECT conv_id, prompt_tokens FROM requests").fetchall()
    assert sorted(logged) == list(enumerate(exact_counts))  # the server's usage, as it said
