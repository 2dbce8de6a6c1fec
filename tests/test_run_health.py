"""Run-level fatal conditions: a run that cannot succeed stops within seconds, exit 1, saying
why and what to do; a server that is only restarting is waited for."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from engine.app.run import RunOptions, execute_run
from engine.clock import FakeClock
from engine.config import RetryConfig, load_config
from engine.errors import (
    ConnectionRefused,
    HostNotFound,
    MalformedResponse,
    NotChatCompletions,
    PermanentRequestError,
    ServerError,
    ServerUnreachable,
    SystematicFailure,
)
from engine.health import RunHealth
from engine.progress.store import store_snapshot
from engine.progress.summary import summary_text
from engine.reasons import reason_family
from engine.scheduler import RunResult, RunStatus, judge_finished
from engine.simulator import SimSettings, run_simulator
from tests.badserver import bad_server
from tests.runfixtures import write_config

KEY = "sk-test-" + "Hq4" * 12


def rows(run_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def provider_config(tmp_path: Path, base_url: str, *, extra: str = "") -> Path:
    path = write_config(tmp_path, extra=extra)
    text = path.read_text().replace('kind = "sim"', f'kind = "openai"\nbase_url = "{base_url}"')
    text = text.replace('model = "gpt-4o-mini"', 'model = "gpt-4o-mini"\napi_key_env = "M2L_KEY"')
    path.write_text(text)
    return path


# --- the pure watch, on a fake clock ----------------------------------------------------------


def test_a_host_that_never_resolved_is_fatal_at_once() -> None:
    """A DNS failure before any answer is a typo: the first one stops the run."""
    health = RunHealth(clock=FakeClock())
    fatal = health.request_failed(HostNotFound("the host '127.0.0.l' does not resolve"))
    assert isinstance(fatal, ServerUnreachable) and "provider.base_url" in str(fatal)


def test_an_unreachable_server_is_waited_for_then_fatal() -> None:
    """Refusals are waited out for unreachable_s; past it (and enough of them) the run stops."""
    clock = FakeClock()
    health = RunHealth(RetryConfig(unreachable_s=60.0, refused_before_fatal=5), clock=clock)
    refused = ConnectionRefused("cannot connect to http://127.0.0.1:9/v1: refused")
    for _ in range(30):
        assert health.request_failed(refused) is None
        clock.advance(1.9)
    assert health.unreachable_for == pytest.approx(57.0)
    clock.advance(3.2)
    fatal = health.request_failed(refused)
    assert isinstance(fatal, ServerUnreachable)
    assert "60 s" in str(fatal) and "retry.unreachable_s" in str(fatal)


def test_an_answer_resets_the_unreachable_wait() -> None:
    """A server that comes back (any answer, even a 500) starts the wait afresh."""
    clock = FakeClock()
    health = RunHealth(RetryConfig(unreachable_s=10.0, refused_before_fatal=1), clock=clock)
    refused = ConnectionRefused("refused")
    assert health.request_failed(refused) is None
    clock.advance(9.0)
    assert health.request_failed(ServerError("500", status=500)) is None
    clock.advance(9.0)
    assert health.request_failed(refused) is None  # a new outage, 0 s old
    assert health.unreachable_for == 0.0
    # A host that resolved once and stops resolving is an outage too, not a typo.
    assert health.request_failed(HostNotFound("no DNS")) is None


def test_non_completions_in_a_row_are_fatal_and_a_good_reply_resets_them() -> None:
    """N 200s in a row that are not chat completions stop the run; a good reply between resets."""
    health = RunHealth(RetryConfig(malformed_before_fatal=3), clock=FakeClock())
    page = MalformedResponse("not a chat completion; it began '<html>'", status=200)
    assert health.request_failed(page) is None
    assert health.request_failed(page) is None
    health.reply_ok()
    assert health.request_failed(page) is None
    assert health.request_failed(ServerError("502", status=502)) is None  # not a 200
    assert health.request_failed(page) is None
    fatal = health.request_failed(page)
    assert isinstance(fatal, NotChatCompletions) and "provider.base_url" in str(fatal)


def test_the_same_400_for_every_request_is_fatal() -> None:
    """One 400, met again and again in a row, stops the run; different 400s do not."""
    health = RunHealth(RetryConfig(malformed_before_fatal=3), clock=FakeClock())
    for n in range(4):
        other = PermanentRequestError(f"bad request (400): thing {'x' * n} is odd", status=400)
        assert health.request_failed(other) is None
    health = RunHealth(RetryConfig(malformed_before_fatal=3), clock=FakeClock())
    same = "bad request (400): Unsupported parameter: 'max_tokens' (request {n})"
    results = [
        health.request_failed(PermanentRequestError(same.format(n=n), status=400)) for n in range(3)
    ]
    assert results[:2] == [None, None] and results[2] is not None
    assert "max_tokens" in str(results[2]) and results[2].status == 400


def test_systematic_failure_needs_a_full_window_of_one_reason() -> None:
    """The last N conversations all failing for one reason stop the run; a done one resets it."""
    health = RunHealth(systematic_window=4, clock=FakeClock())
    for tries in (3, 2, 3):
        assert health.conversation_finished(False, f"wrong_language after {tries} tries") is None
    assert health.conversation_finished(True, None) is None
    for _ in range(3):
        assert health.conversation_finished(False, "wrong_language after 3 tries") is None
    assert health.conversation_finished(False, "refusal after 3 tries") is None  # mixed
    health = RunHealth(systematic_window=4, clock=FakeClock())
    verdicts = [health.conversation_finished(False, "wrong_language after 3 tries")] * 1
    verdicts += [health.conversation_finished(False, "wrong_language after 3 tries") for _ in "abc"]
    fatal = verdicts[-1]
    assert isinstance(fatal, SystematicFailure)
    assert "last 4 conversations" in str(fatal) and "target language" in str(fatal)
    assert "--retry-failed" in str(fatal) and "run.systematic_failure_window" in str(fatal)
    off = RunHealth(systematic_window=0, clock=FakeClock())
    assert all(off.conversation_finished(False, "x") is None for _ in range(100))


def test_reason_families_group_near_identical_reasons() -> None:
    """Counts, quoted snippets and ids do not make two reasons different."""
    a = "malformed_response: not a chat completion (line 1 column 5); it began '<html><b>'"
    b = "malformed_response: not a chat completion (line 1 column 9); it began '{\"x\": 1}'"
    assert reason_family(a) == reason_family(b)
    assert reason_family("wrong_language after 3 tries") == reason_family(
        "wrong_language after 2 tries"
    )
    assert reason_family("refusal after 3 tries") != reason_family("wrong_language after 3 tries")
    assert reason_family(None) == "unknown"


# --- real runs ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_host_that_does_not_resolve_stops_the_run_in_seconds_unbilled(
    tmp_path: Path,
) -> None:
    """A typo in the host (127.0.0.l) stops within seconds, exit 1, and nothing is billed."""
    config = load_config(provider_config(tmp_path, "http://127.0.0.l:18060/v1"))
    started = time.monotonic()
    report = await execute_run(config, env={"M2L_KEY": KEY})
    assert time.monotonic() - started < 10
    assert report.result.status is RunStatus.FAILED
    assert "127.0.0.l" in report.result.message and "provider.base_url" in report.result.message
    billed = rows(
        config.run_dir,
        "SELECT count(*), coalesce(sum(cost_usd), 0) FROM requests WHERE status != 'rejected'",
    )
    assert billed == [(0, 0)]


@pytest.mark.anyio
async def test_nothing_listening_is_fatal_after_unreachable_s(tmp_path: Path) -> None:
    """Connections refused for retry.unreachable_s end the run with a hint; none is billed."""
    config = load_config(provider_config(tmp_path, "http://127.0.0.1:9/v1", extra=""))
    text = config.source.read_text() if config.source else ""
    assert config.source is not None
    config.source.write_text(text.replace("[retry]", "[retry]\nunreachable_s = 1.0"))
    config = load_config(config.source)
    started = time.monotonic()
    report = await execute_run(config, env={"M2L_KEY": KEY})
    assert 1.0 <= time.monotonic() - started < 10
    assert report.result.status is RunStatus.FAILED
    message = report.result.message
    assert "could not be reached" in message and "base_url" in message
    assert rows(config.run_dir, "SELECT DISTINCT status FROM requests") == [("rejected",)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.anyio
async def test_a_server_restart_does_not_end_the_run(tmp_path: Path) -> None:
    """A server that refuses connections for a second and comes back: the run finishes."""
    port = free_port()
    path = provider_config(tmp_path, f"http://127.0.0.1:{port}/v1")
    path.write_text(path.read_text().replace("[retry]", "[retry]\nunreachable_s = 30.0"))
    config = load_config(path)
    run = asyncio.create_task(execute_run(config, env={"M2L_KEY": KEY}))
    await asyncio.sleep(1.5)  # the server is "restarting": every connection is refused
    assert not run.done()
    settings = SimSettings(port=port, ttft_s=0, per_token_s=0, require_api_key=KEY)
    async with run_simulator(settings):
        report = await asyncio.wait_for(run, 60)
    assert report.result.status is RunStatus.FINISHED, report.result.message
    assert report.counts == {"done": 8}
    refused = rows(
        config.run_dir,
        "SELECT count(*), coalesce(sum(cost_usd), 0) FROM requests "
        "WHERE error_class = 'connection_refused'",
    )
    assert refused[0][0] > 0 and refused[0][1] == 0  # waited for, and never billed


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [b"<!doctype html><html><body>Welcome to nginx!</body></html>", b'{"choices": []}'],
    ids=["html-page", "empty-choices"],
)
async def test_200s_that_are_not_completions_stop_the_run(tmp_path: Path, body: bytes) -> None:
    """A base_url answering 200 with a web page or an empty completion: exit 1 within seconds."""
    async with bad_server(lambda auth, n: (200, body, {"Content-Type": "text/html"})) as url:
        config = load_config(provider_config(tmp_path, url))
        started = time.monotonic()
        report = await execute_run(config, env={"M2L_KEY": KEY})
    assert time.monotonic() - started < 15
    assert report.result.status is RunStatus.FAILED
    assert "not a chat completion" in report.result.message
    assert "provider.base_url" in report.result.message


@pytest.mark.anyio
async def test_a_model_that_never_writes_the_language_stops_the_run(tmp_path: Path) -> None:
    """Every reply in the wrong language: the run stops once a window of conversations failed."""
    path = write_config(
        tmp_path,
        evols_per_seed=3,
        faults="wrong_language = 1.0",
        extra="",
    )
    path.write_text(
        path.read_text().replace("grace_s = 5", "grace_s = 5\nsystematic_failure_window = 5")
    )
    config = load_config(path)
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FAILED
    message = report.result.message
    assert "last 5 conversations" in message and "wrong_language" in message
    assert "--retry-failed" in message
    assert report.counts.get("done", 0) == 0
    assert report.counts.get("pending", 0) > 0  # stopped early: not every conversation was tried


@pytest.mark.anyio
async def test_a_run_where_every_conversation_failed_does_not_finish(tmp_path: Path) -> None:
    """Fewer conversations than the window, all failed: the run still ends as failed."""
    config = load_config(write_config(tmp_path, faults="server_error = 1.0"))
    report = await execute_run(config, env={})
    assert report.counts == {"failed": 8}
    assert report.result.status is RunStatus.FAILED
    assert "every conversation failed" in report.result.message


def test_report_json_helper_is_valid() -> None:
    """(sanity) orjson round-trips the bad server's bodies used above."""
    assert orjson.loads(b'{"choices": []}') == {"choices": []}


@pytest.mark.anyio
async def test_retry_failed_takes_failed_conversations_back_from_their_last_good_step(
    tmp_path: Path,
) -> None:
    """After the cause is fixed, --retry-failed finishes the failed conversations, counted once,
    keeping the steps they had, and the run records the retry."""
    path = write_config(tmp_path, faults="server_error = 1.0")
    config = load_config(path)
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FAILED and report.counts == {"failed": 8}
    # Give two of them an accepted first step, as a conversation that failed later would have.
    with duckdb.connect(str(config.run_dir / "state.duckdb")) as conn:
        conn.execute(
            "INSERT INTO messages (conv_id, step, turn, role, kind, content, tokens) "
            "SELECT conv_id, 0, 1, 'user', 'evolve', 'Eleza kwa ufupi jinsi mvua inavyonyesha "
            "katika milima ya Kilimanjaro wakati wa masika.', 20 FROM conversations "
            "WHERE conv_id IN (5, 6)"
        )
        conn.execute("UPDATE conversations SET steps_done = 1 WHERE conv_id IN (5, 6)")
    path.write_text(path.read_text().replace("server_error = 1.0", ""))  # the fix
    config = load_config(path)
    again = await execute_run(config, env={}, options=RunOptions(force=True, retry_failed=True))
    assert again.result.status is RunStatus.FINISHED, again.result.message
    assert again.counts == {"done": 8}
    kept = rows(
        config.run_dir, "SELECT conv_id, content FROM messages WHERE step = 0 AND conv_id IN (5, 6)"
    )
    assert all(str(content).startswith("Eleza kwa ufupi") for _, content in kept)
    meta = dict(
        rows(config.run_dir, "SELECT key, value FROM run_meta WHERE key LIKE 'retry_failed%'")
    )
    assert meta == {"retry_failed_times": "1", "retry_failed_conversations": "8"}
    assert rows(config.run_dir, "SELECT count(*) FROM conversations") == [(8,)]


@pytest.mark.anyio
async def test_a_fatal_stop_settles_the_attempts_it_cut_short_as_unknown(tmp_path: Path) -> None:
    """Requests in flight when a 401 stops the run are not left reserved: they are settled as
    unknown at their worst case before the run returns, and the summary holds them apart."""

    def answer(auth: str, n: int) -> tuple[int, bytes, dict[str, str]]:
        return 401, b'{"error": {"message": "bad key"}}', {"Content-Type": "application/json"}

    async with bad_server(answer, hold=lambda n: 30.0 if n == 1 else 0.0) as url:
        # A fixed cap of 4, of which the timeout guard lets two go before any reply measured
        # the server: the first hangs while the second is refused.
        config = load_config(provider_config(tmp_path, url, extra="[limits]\nmax_inflight = 4"))
        report = await asyncio.wait_for(execute_run(config, env={"M2L_KEY": KEY}), 25)
    assert report.result.status is RunStatus.FAILED
    statuses = dict(rows(config.run_dir, "SELECT status, count(*) FROM requests GROUP BY 1"))
    assert "reserved" not in statuses
    assert statuses.get("unknown", 0) == 1
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        snapshot = store_snapshot(conn)
    assert snapshot.unknown_usd > 0 and snapshot.reserved_usd == 0.0
    assert "held for unknown outcomes" in summary_text(snapshot, run_dir=config.run_dir)


def test_a_run_that_ends_mostly_failed_has_failed() -> None:
    """More than max_failed_share of the final conversations failed: the run failed, and the
    message names the commonest reason with its fix; at or below the share it finished."""
    finished = RunResult(RunStatus.FINISHED, "every conversation is done, failed or filtered")
    counts = {"done": 4, "failed": 6}
    families = {"wrong_language after N tries": 5, "server_error: HTTP N": 1}
    judged = judge_finished(finished, counts, families, 0.5)
    assert judged.status is RunStatus.FAILED
    assert "6 of 10 conversations failed (60%)" in judged.message
    assert "(5): wrong_language after N tries" in judged.message
    assert "does not write the target language" in judged.message  # the fix hint
    assert "4 done are kept" in judged.message and "--retry-failed" in judged.message
    assert "run.max_failed_share" in judged.message
    assert judge_finished(finished, counts, families, 0.6) is finished
    assert judge_finished(finished, counts, families, 1.0) is finished
    assert judge_finished(finished, {"done": 10}, {}, 0.0) is finished
    # Not one done: failed whatever the share; a stop is judged by what stopped it.
    every = judge_finished(finished, {"failed": 3}, {}, 1.0)
    assert (
        every.status is RunStatus.FAILED and "every conversation failed (3 of 3)" in every.message
    )
    stopped = RunResult(RunStatus.INTERRUPTED, "stopped")
    assert judge_finished(stopped, counts, families, 0.0) is stopped


@pytest.mark.anyio
async def test_a_resumed_run_that_ends_mostly_failed_exits_failed(tmp_path: Path) -> None:
    """The share is of every session's conversations, read from the store at the run's end:
    a finished run with 5 of its 8 conversations failed ends as failed, its 3 done exported;
    with run.max_failed_share = 1 the same store ends as finished."""
    path = write_config(tmp_path)
    config = load_config(path)
    first = await execute_run(config, env={})
    assert first.result.status is RunStatus.FINISHED and first.counts == {"done": 8}
    with duckdb.connect(str(config.run_dir / "state.duckdb")) as conn:
        conn.execute(
            "UPDATE conversations SET status = 'failed', error = 'wrong_language after 3 tries' "
            "WHERE conv_id IN (SELECT conv_id FROM conversations ORDER BY conv_id LIMIT 5)"
        )
    again = await execute_run(config, env={})
    assert again.counts == {"done": 3, "failed": 5}
    assert again.result.status is RunStatus.FAILED
    assert "5 of 8 conversations failed (62%)" in again.result.message
    assert "wrong_language after N tries" in again.result.message
    assert again.dataset is not None and again.dataset.rows == 3
    path.write_text(path.read_text().replace("grace_s = 5", "grace_s = 5\nmax_failed_share = 1"))
    lenient = await execute_run(load_config(path), env={}, options=RunOptions(force=True))
    assert lenient.result.status is RunStatus.FINISHED, lenient.result.message
