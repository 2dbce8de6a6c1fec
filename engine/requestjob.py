"""An ``m2l requests`` job: every line of a request file sent, its result written in input order.

The shape: check the whole input (one clear error naming the file and line) → open the job's
store beside the output (new, or resumed when it was made from the same input) → the same
dispatcher as ``m2l run`` (concurrency gate, rate limiter, retries, the request log and the
budget's ledger) → workers take lines in order, each result is stored and the output extended
as far as results are contiguous. A kill loses at most the requests in flight; the next start
sends the lines that have no stored result and writes the file on from where it was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import anyio.to_thread
import orjson

from budgets.ledger import Ledger, spend_from_log
from budgets.prices import Price, Pricing, load_price_table, missing_price_error, resolve_price
from engine.chat import ChatRequest, Message, Usage
from engine.client import ChatClient
from engine.concurrency import ConcurrencyGate
from engine.config import RequestsConfig, Secret, config_diff
from engine.dispatcher import Completer, Dispatcher
from engine.errors import BudgetExhausted, ConfigError, FatalRunError, RequestError, StateError
from engine.events import (
    BudgetUpdate,
    ConversationFinished,
    ConversationStarted,
    Event,
    EventHook,
    Hooks,
    RequestDone,
    RunFinished,
    RunStarted,
)
from engine.health import RunHealth
from engine.limiter import RateLimiter
from engine.redact import scrub
from engine.requestfile import (
    ByteBound,
    Counter,
    LineError,
    RequestLine,
    error_line,
    ok_line,
    parse_line,
)
from engine.requestshape import hosted_by_openai
from engine.simulator import run_simulator
from engine.tokens import TokenCounter
from engine.version import __version__
from state import journal, requestjob
from state.batcher import JournalBatcher
from state.requestlog import RequestLog, settle_unknown
from state.schema import STATE_FILE
from state.writer import GroupCommitWriter

__all__ = [
    "JobReport",
    "RequestJob",
    "Scan",
    "scan_input",
    "state_dir_for",
]

log = logging.getLogger(__name__)

KIND: Final = "request"  # the step kind requests report in events

# How the job's writes are flushed. Each request waits for the flush that logs its attempt
# before it goes out, while a flush costs about the same CPU whatever it holds (~8 statements
# and a commit): a flush every 50 ms, as m2l run makes, held ~15 attempts at a time on an
# unlimited server (bench/requests.py). So a flush waits up to LINGER_S for more, but goes at
# once when the attempts waiting for it fill FULL_SHARE of the concurrency gate: past that the
# server would sit idle for the store.
LINGER_S: Final = 0.1
FULL_SHARE: Final = 0.5
_BYTES: Final = ByteBound()
_LOOKS: Final = 16  # replies after each of which the limiter is looked at for a token limit
Status = Literal["finished", "interrupted", "budget_exhausted", "failed"]


def state_dir_for(out: Path) -> Path:
    """Where the job writing ``out`` keeps its state: ``<out>.m2l`` beside it."""
    return out.with_name(out.name + ".m2l")


# --- the input, checked whole before anything starts ------------------------------------------


@dataclass(frozen=True, slots=True)
class Scan:
    """What the input holds: its digest, how many requests, and each model's first line."""

    sha256: str
    lines: int
    models: Mapping[str, int]  # model → the first line number naming it


class _NoCount:
    """A token counter that counts nothing: the check pass only looks at the shape."""

    encoding_name = "none"

    def count(self, text: str) -> int:
        return 0

    def message(self, role: str, content: str) -> Message:
        return Message(role, "", 0)


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                yield line_no, raw


def scan_input(path: Path, *, default_model: str) -> Scan:
    """Check every line of the input (call it off the loop); raises ConfigError naming the
    file and the first bad line, or the file when it cannot be read or holds no request."""
    digest = hashlib.sha256()
    models: dict[str, int] = {}
    count = 0
    no_count: Any = _NoCount()
    try:
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, start=1):
                digest.update(raw)
                if not raw.strip():
                    continue
                try:
                    line = parse_line(
                        raw,
                        index=count,
                        line_no=line_no,
                        default_model=default_model,
                        default_max_tokens=1,
                        counters=lambda _model: no_count,
                    )
                except LineError as exc:
                    raise ConfigError(f"{path}:{line_no}: {exc}") from None
                models.setdefault(line.model, line_no)
                count += 1
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; give a JSONL file of request bodies") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give a JSONL file of request bodies") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    if count == 0:
        raise ConfigError(f"{path}: holds no request (every line is blank)")
    return Scan(digest.hexdigest(), count, models)


# --- pricing: each line at its own model's price ------------------------------------------------

# The model of the line a worker is sending: the request log prices a reply by its usage only,
# and a file may name several models. Each worker is its own task, so each sees its own line.
_LINE_MODEL: contextvars.ContextVar[str] = contextvars.ContextVar("m2l_line_model")


class _ModelCosts:
    """The request log's CostModel over several models, each at its own price (unpriced: 0)."""

    def __init__(self, pricing: Mapping[str, Pricing]) -> None:
        self._pricing = pricing

    def _for(self, model: str | None) -> Pricing | None:
        return self._pricing.get(model if model is not None else _LINE_MODEL.get(""))

    def worst_case(self, request: ChatRequest) -> float:
        model = request.raw.get("model") if request.raw is not None else None
        pricing = self._for(model if isinstance(model, str) else None)
        return pricing.worst_case(request) if pricing is not None else 0.0

    def actual(self, usage: Usage) -> float:
        pricing = self._for(None)
        return pricing.actual(usage) if pricing is not None else 0.0


def _pricing(config: RequestsConfig, scan: Scan, in_path: Path) -> dict[str, Pricing]:
    """Each model's pricing; raises ConfigError for a model m2l cannot price when a USD cap is
    set or the requests go to OpenAI (which bills them), naming the first line that uses it."""
    table = load_price_table()
    to_openai = not config.uses_simulator() and hosted_by_openai(config.provider.base_url)
    out: dict[str, Pricing] = {}
    for model, line_no in scan.models.items():
        price: Price | None = resolve_price(model, table, config.budget.prices)
        if price is None:
            if config.budget.usd is not None or to_openai:
                why = (
                    f"budget.usd = {config.budget.usd:g} caps what this job may spend"
                    if config.budget.usd is not None
                    else "the requests go to OpenAI, which bills them"
                )
                error = missing_price_error(model, table, why=why)
                first = str(error).split(". ", 1)[0]
                raise ConfigError(
                    f"{in_path}:{line_no}: unknown model {model!r}: {first}. Give its price "
                    f"with --price {model}=INPUT,OUTPUT (USD per 1M tokens) or [budget.prices] "
                    "in --config, or fix the model name"
                )
            continue
        margin = 0.0 if table.lookup(model) is not None else 0.10  # a tokenizer m2l may not match
        out[model] = Pricing(price, prompt_margin=margin)
    return out


# --- the job -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobReport:
    """How a job ended, and where its results are."""

    status: Status
    message: str
    total: int  # requests in the input
    ok: int  # answered (this and earlier sessions)
    failed: int  # failed for good, with the error in their output line
    written: int  # lines in the output file (a prefix of the input's order)
    out: Path
    state_dir: Path


class _BudgetFeed:
    """Reports BudgetUpdate events (spent, held, cap) at most 4 times a second."""

    def __init__(self, ledger: Ledger | None, hooks: EventHook, spent: float) -> None:
        self._ledger = ledger
        self._hooks = hooks
        self._spent = spent
        self._last = float("-inf")

    def on_event(self, event: Event) -> None:
        if isinstance(event, RequestDone):
            self._spent += event.cost_usd
            if event.t - self._last >= 0.25:
                self.report(event.t)

    def report(self, t: float) -> None:
        self._last = t
        ledger = self._ledger
        if ledger is None:
            self._hooks.on_event(BudgetUpdate(self._spent, 0.0, None, None, t))
        else:
            cap = ledger.caps.usd
            self._hooks.on_event(BudgetUpdate(ledger.spent.usd, ledger.reserved.usd, cap, None, t))


class RequestJob:
    """One ``m2l requests`` job; ``await job.run()`` drives it to its end (or a stop).

    ``request_stop`` (Ctrl-C) stops taking lines and lets requests in flight finish within
    ``requests.grace_s``; ``now=True`` cancels them. Raises ConfigError for bad input, the
    wrong output or a config change that alters results, StateError for an unusable store,
    both before any request is sent.
    """

    def __init__(
        self,
        config: RequestsConfig,
        in_path: Path,
        out_path: Path,
        *,
        env: Mapping[str, str],
        hooks: EventHook | None = None,
        completer: Completer | None = None,
    ) -> None:
        self._config = config
        self._in = in_path
        self._out = out_path
        self._env = env
        self._hooks: Hooks = Hooks([hooks] if hooks is not None else [])
        self._completer = completer  # tests and benchmarks: instead of an HTTP client
        self._stop = asyncio.Event()
        self._now = False
        self._status: Status | None = None
        self._message = ""
        self._counters: dict[str, TokenCounter] = {}
        # The result batch riding on the journal's flush that is still gathering, and its future.
        self._batch: tuple[requestjob.ResultBatch, asyncio.Future[None]] | None = None
        self._failure: BaseException | None = None
        self._total = 0
        self._prepared: tuple[Secret | None, Path, Scan, dict[str, Pricing]] | None = None
        self._exact = True  # lines counted exactly (set in run())
        self._limiter: RateLimiter | None = None
        self._next_look = 0.0  # when _exact_counts looks at the limiter again
        self._replies = self._looked = 0  # replies so far, and when the limiter was looked at

    # --- control -------------------------------------------------------------------------------

    def request_stop(self, reason: str = "interrupted", *, now: bool = False) -> None:
        """Stop taking lines (``now``: and cancel the requests in flight)."""
        self._end("interrupted", reason)
        self._now = self._now or now
        self._stop.set()

    def _end(self, status: Status, message: str) -> None:
        if self._status is None:
            self._status, self._message = status, message

    # --- set-up --------------------------------------------------------------------------------

    def _check_paths(self) -> Path:
        out = self._out
        if not out.parent.is_dir():
            raise ConfigError(
                f"{out}: the folder {out.parent} does not exist; create it, or write the "
                "output somewhere else"
            )
        if out.is_dir():
            raise ConfigError(f"{out}: is a folder; name the output file (e.g. {out}/out.jsonl)")
        if out.resolve() == self._in.resolve():
            raise ConfigError(f"{out}: the output would overwrite the input; name another file")
        state_dir = state_dir_for(out)
        if not (state_dir / STATE_FILE).exists() and out.exists() and out.stat().st_size > 0:
            raise ConfigError(
                f"{out} already exists and no m2l requests job wrote it (there is no "
                f"{state_dir.name} beside it); move it away or name another output file"
            )
        return state_dir

    async def _open_meta(self, writer: GroupCommitWriter, scan: Scan) -> dict[str, str]:
        """The job's record: made for a new job, checked against this input and config on a
        resumed one; raises ConfigError when the store is another input's or content changed."""
        meta = await writer.run(journal.read_meta)
        snapshot = self._config.snapshot()
        if "job" not in meta:
            if "config_json" in meta:
                raise StateError(
                    f"{state_dir_for(self._out)} holds an m2l run, not an m2l requests job; name "
                    "another output file"
                )
            meta = {
                "job": requestjob.JOB_KIND,
                "m2l_version": __version__,
                "in_sha256": scan.sha256,
                "in_file": str(self._in),
                "lines_total": str(scan.lines),
                "requests_config": orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS).decode(),
                requestjob.META_OUT_LINES: "0",
                requestjob.META_OUT_BYTES: "0",
            }
            await writer.run(journal.write_meta(meta))
            return meta
        if meta.get("in_sha256") != scan.sha256:
            raise ConfigError(
                f"{self._out} was made from another input ({meta.get('in_file', '?')}, whose "
                f"contents differ from {self._in}); name another output file, or delete "
                f"{self._out} and {state_dir_for(self._out).name} to start again"
            )
        stored = orjson.loads(meta.get("requests_config", "{}"))
        changed = [
            key
            for key, _old, _new, safe in config_diff(stored, snapshot)
            if not safe and not key.startswith("sim.")
        ]
        if changed:
            raise ConfigError(
                f"{self._out}: {', '.join(changed)} changed since the job started, which would "
                "change its results; restore the old value to continue, or name another output"
            )
        return meta

    def _counter(self, model: str) -> TokenCounter:
        counter = self._counters.get(model)
        if counter is None:
            counter = self._counters[model] = self._new_counter(model)
        return counter

    def _new_counter(self, model: str) -> TokenCounter:
        return TokenCounter(
            model, unknown_model_encoding=self._config.provider.unknown_model_encoding
        )

    # --- the run -------------------------------------------------------------------------------

    async def prepare(self) -> Path:
        """Check the key, the paths and the whole input before anything is created; the job's
        state folder. Raises ConfigError naming the file (and line) that is wrong."""
        if self._prepared is None:
            config = self._config
            api_key = config.api_key(self._env)
            state_dir = self._check_paths()
            scan = await anyio.to_thread.run_sync(
                lambda: scan_input(self._in, default_model=config.provider.model)
            )
            pricing = _pricing(config, scan, self._in)
            # A tokenizer takes ~0.5 s to load: off the loop, before the first line needs it.
            counters = await anyio.to_thread.run_sync(
                lambda: {model: self._new_counter(model) for model in scan.models}
            )
            self._counters.update(counters)
            self._total = scan.lines
            self._prepared = (api_key, state_dir, scan, pricing)
        return self._prepared[1]

    async def run(self) -> JobReport:
        """Send every line without a stored result; the report of how the job ended."""
        config = self._config
        await self.prepare()
        assert self._prepared is not None
        api_key, state_dir, scan, pricing = self._prepared
        async with GroupCommitWriter(
            state_dir / STATE_FILE, create=True, store=config.store
        ) as writer:
            meta = await self._open_meta(writer, scan)
            await writer.run(settle_unknown)  # attempts a kill left in flight: outcome unknown
            written = int(meta.get(requestjob.META_OUT_LINES, "0"))
            size = int(meta.get(requestjob.META_OUT_BYTES, "0"))
            if not self._out.exists() or self._out.stat().st_size < size:
                written, size = 0, 0  # the file was removed or cut: write it again whole
            stored = await writer.run(lambda c: requestjob.stored_lines(c, start=0))
            start = await writer.run(spend_from_log)
            next_id = await writer.run(RequestLog.next_id)
            ledger = Ledger(config.budget, start) if config.budget.capped else None
            order = requestjob.OutputOrder(
                written=written,
                stored=[i for i in stored if i >= written],
                cap_bytes=int(config.requests.buffer_mb * 1024 * 1024),
            )
            out_file = await anyio.to_thread.run_sync(
                lambda: requestjob.OutputFile(self._out, lines=written, size=size)
            )
            try:
                batcher = JournalBatcher(writer, linger_s=LINGER_S)
                budget = _BudgetFeed(ledger, self._hooks, start.usd)
                self._hooks.add(budget)
                accounting = RequestLog(
                    batcher,
                    model=config.provider.model,
                    next_request_id=next_id,
                    costs=_ModelCosts(pricing),
                    guard=ledger,
                )
                async with self._completer_for(api_key) as (completer, provider):
                    gate = ConcurrencyGate(
                        fixed=config.limits.fixed_inflight,
                        timeout_s=config.provider.read_timeout,
                    )
                    batcher.flush_when(lambda waiting: waiting >= gate.limit * FULL_SHARE)
                    limiter = RateLimiter(config.limits)
                    # A line's exact token count feeds the limiter's token bucket (configured,
                    # or learned from a reply's headers), the budget's caps and the worst-case
                    # price; when none of these exists nothing reads it, and a bound counted
                    # for free stands in (~0.1 ms of CPU a line saved: a third of the floor's
                    # whole request). The replies' usage is logged either way.
                    self._exact = (
                        config.limits.tpm is not None or ledger is not None or bool(pricing)
                    )
                    self._limiter = limiter
                    dispatcher = Dispatcher(
                        completer,
                        limiter,
                        gate=gate,
                        policy=config.retry,
                        accounting=accounting,
                        hooks=self._hooks,
                        health=RunHealth(config.retry, systematic_window=0),
                    )
                    self._hooks.on_event(
                        RunStarted(
                            self._out.name,
                            scan.lines,
                            len(stored),
                            config.limits.rpm,
                            config.limits.tpm,
                            config.budget.usd,
                            _now(),
                            provider=provider,
                            model=_models_shown(scan.models),
                            simulated=config.uses_simulator(),
                            unit="requests",
                        )
                    )
                    budget.report(_now())
                    done = set(stored)
                    await self._work(dispatcher, batcher, order, out_file, done)
                    self._add(batcher, out_file, None, order.take())  # stored earlier
                    await batcher.flush()
            finally:
                out_file.close()
            ok, failed = await writer.run(requestjob.line_counts)
        if self._failure is not None:
            raise self._failure
        if ok + failed >= scan.lines:
            self._status, self._message = "finished", ""
        elif self._status is None:
            self._end("interrupted", "the job stopped before every line had a result")
        assert self._status is not None
        report = JobReport(
            self._status, self._message, scan.lines, ok, failed, order.written, self._out, state_dir
        )
        self._hooks.on_event(RunFinished(report.status, report.message, _now()))
        return report

    @contextlib.asynccontextmanager
    async def _completer_for(self, api_key: Secret | None) -> AsyncIterator[tuple[Completer, str]]:
        """The HTTP client (to the embedded simulator, or the configured endpoint) and where
        it sends, for people (a host, never user info or a query)."""
        config = self._config
        if self._completer is not None:
            yield self._completer, "test completer"
            return
        async with contextlib.AsyncExitStack() as stack:
            if config.uses_simulator():
                sim = await stack.enter_async_context(run_simulator(config.sim))
                base_url, where = sim.base_url, "embedded simulator"
            else:
                from urllib.parse import urlsplit

                base_url = config.provider.base_url
                where = urlsplit(base_url).netloc.rpartition("@")[2]
            client = await stack.enter_async_context(
                ChatClient(config.provider, base_url=base_url, api_key=api_key)
            )
            yield client, where

    async def _work(
        self,
        dispatcher: Dispatcher,
        batcher: JournalBatcher,
        order: requestjob.OutputOrder,
        out_file: requestjob.OutputFile,
        done: set[int],
    ) -> None:
        """Workers take the lines without a result in input order until none is left or a
        stop; then requests in flight get the grace period (none after a fatal error)."""
        lines = self._lines(done)
        finish = self._finisher(batcher, order, out_file)

        async def worker() -> None:
            for line in lines:
                if self._stop.is_set():
                    return
                await self._one(dispatcher, line, finish)
                if self._stop.is_set():
                    return

        n = max(1, min(self._config.requests.max_active, self._total - len(done)))
        tasks = [asyncio.create_task(worker(), name=f"m2l requests worker {i}") for i in range(n)]
        everything: asyncio.Future[Any] = asyncio.gather(*tasks)
        stopping: asyncio.Future[Any] = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({everything, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not everything.done():
                grace = 0.0 if self._now or self._failure else self._config.requests.grace_s
                if grace > 0:
                    await asyncio.wait({everything}, timeout=grace)
        finally:
            stopping.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await everything

    def _exact_counts(self) -> bool:
        """Whether a line's tokens must be counted exactly: see run()."""
        if not self._exact and self._limiter is not None and self._replies > self._looked:
            # A server that sends x-ratelimit headers gives the limiter a token bucket with its
            # first reply. Looked at after each of the first replies, then a few times a second
            # (a snapshot of the limiter is a few µs a line otherwise): a line read in between
            # is charged the bound, which errs high.
            now = _now()
            if self._looked < _LOOKS or now >= self._next_look:
                self._looked, self._next_look = self._replies, now + 0.25
                self._exact = self._limiter.statistics().tokens is not None
        return self._exact

    def _bound(self, model: str) -> Counter:
        return _BYTES

    def _lines(self, done: set[int]) -> Iterator[RequestLine]:
        """The input's lines that have no stored result, parsed and counted (lazily)."""
        config = self._config
        for index, (line_no, raw) in enumerate(_raw_lines(self._in)):
            if index not in done:
                try:
                    yield parse_line(
                        raw,
                        index=index,
                        line_no=line_no,
                        default_model=config.provider.model,
                        default_max_tokens=config.requests.max_tokens,
                        counters=self._counter if self._exact_counts() else self._bound,
                    )
                except LineError as exc:  # checked before the start: the file changed since
                    raise ConfigError(f"{self._in}:{line_no}: {exc}") from None

    async def _one(
        self,
        dispatcher: Dispatcher,
        line: RequestLine,
        finish: Callable[[RequestLine, bytes, bool], None],
    ) -> None:
        emit = self._hooks.on_event
        emit(ConversationStarted(line.index, line.model, KIND, _now()))
        _LINE_MODEL.set(line.model)
        try:
            result = await dispatcher.complete(line.request, kind=KIND)
        except FatalRunError as exc:
            self._failed_run(exc)
            return
        except BudgetExhausted as exc:
            self._end("budget_exhausted", str(exc))
            self._stop.set()
            return
        except RequestError as exc:
            self._replies += 1
            finish(line, error_line(line, exc), False)
            emit(
                ConversationFinished(
                    line.index, "failed", f"{exc.error_class}: {exc}", line.model, KIND, 1, _now()
                )
            )
            return
        self._replies += 1
        finish(line, ok_line(line, result), True)
        emit(ConversationFinished(line.index, "done", None, line.model, KIND, 1, _now()))

    def _failed_run(self, exc: FatalRunError) -> None:
        self._end("failed", scrub(str(exc)))
        self._stop.set()
        self._now = True

    # --- results to the store and the file -----------------------------------------------------

    def _finisher(
        self,
        batcher: JournalBatcher,
        order: requestjob.OutputOrder,
        out_file: requestjob.OutputFile,
    ) -> Callable[[RequestLine, bytes, bool], None]:
        def finish(line: RequestLine, text: bytes, ok: bool) -> None:
            order.finish(line.index, text)
            self._add(batcher, out_file, requestjob.LineRow(line.index, ok, text), order.take())

        return finish

    def _add(
        self,
        batcher: JournalBatcher,
        out_file: requestjob.OutputFile,
        row: requestjob.LineRow | None,
        chunk: requestjob.Chunk | None,
    ) -> None:
        """Store a result and append the lines it lets follow, in the journal's next flush.

        Results ride on the flushes the request log makes anyway (one op per flush, one
        statement for its rows): a timer of their own would add flushes, each ~10 statements'
        worth of CPU whatever it holds.
        """
        if row is None and chunk is None:
            return
        gathering = batcher.gathering()
        if self._batch is None or gathering is None or gathering is not self._batch[1]:
            batch = requestjob.ResultBatch(out_file)
            future = batcher.op(batch)
            future.add_done_callback(self._stored)
            self._batch = (batch, future)
        self._batch[0].add(row, chunk)

    def _stored(self, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is None:
            return
        error = future.exception()
        if self._failure is None:
            self._failure = error
            self._end("failed", str(error))
            self._now = True
            self._stop.set()


def _models_shown(models: Mapping[str, int]) -> str:
    names = list(models)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _now() -> float:
    return time.monotonic()
