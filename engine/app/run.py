"""``m2l run``: set up or resume a run, drive it to the end (or a stop), and report.

The shape: load config (done by the CLI) → open the run's store → on a new run, ingest and plan
in one transaction; on a resume, compare the config → start the simulator if no key is set →
build limiter, client, dispatcher, prompter and scheduler → run with live progress → export.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import shutil
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import duckdb
import orjson

from budgets.admission import Budget, load_budget, run_price
from engine.app.modelcheck import check_model
from engine.app.providers import (
    SIMULATOR,
    OpenEndpoint,
    check_endpoints,
    endpoint_host,
    open_endpoints,
)
from engine.batch.mode import cancel_open_batches, make_api, open_batch_mode
from engine.chat import Usage
from engine.client import ChatClient
from engine.concurrency import ConcurrencyGate
from engine.config import (
    Config,
    LimitsConfig,
    Secret,
    added_at_default,
    config_defaults,
    config_diff,
)
from engine.conversation import StepRules
from engine.dispatcher import Accounting, Completer, Dispatcher
from engine.endpoints import Endpoint, EndpointPool
from engine.errors import ConfigError, FatalRunError
from engine.events import (
    EndpointOut,
    Event,
    EventHook,
    Hooks,
    RunFinished,
    RunStarted,
    RunStopping,
)
from engine.health import RunHealth
from engine.leaseholder import LeaseHolder
from engine.limiter import RateLimiter
from engine.maxtokens import CapRule, LengthLearner
from engine.modelprofile import ModelProfile, model_profile
from engine.progress.snapshot import ProgressSnapshot
from engine.progress.store import store_snapshot
from engine.prompter import TaxonomyPrompter
from engine.quality import default_detector
from engine.reasons import by_family
from engine.requestshape import RequestShape
from engine.scheduler import (
    Admission,
    ConversationStore,
    RunResult,
    RunStatus,
    Scheduler,
    StopControl,
    judge_finished,
)
from engine.simulator.sampling import sim_outputs
from engine.tokens import TokenCounter
from engine.validation import QualityValidator
from engine.version import __version__
from prompts.languages import LanguageTable, load_languages
from prompts.taxonomy import Taxonomy, load_taxonomy
from state import batchstore, journal
from state.batcher import JournalBatcher
from state.export import ExportReport, default_output, export_with
from state.requestlog import RequestLog, completion_lengths, settle_unknown
from state.schema import STATE_FILE, compact
from state.setup import SetupReport, plan_run
from state.store import RunStore
from state.tempfiles import remove_stale_temp_files
from state.writer import GroupCommitWriter

log = logging.getLogger(__name__)

__all__ = [
    "SIMULATOR",
    "RunOptions",
    "RunReport",
    "ShardRole",
    "assemble",
    "endpoint_of",
    "execute_run",
    "exit_code",
    "prepare_store",
]


@dataclass(frozen=True, slots=True)
class RunOptions:
    force: bool = False  # accept safe config changes (limits, budget, ...) on resume
    retry_failed: bool = False  # failed conversations go back to work from their last good step


@dataclass(frozen=True, slots=True)
class ShardRole:
    """One shard of a sharded run (``m2l run --ray``): the driver planned its store; it runs the
    ordinary engine there under its lease, with request ids of its own, and exports nothing."""

    store_dir: Path  # holds the shard's state.duckdb
    first_request_id: int  # request ids are unique across the run's shards
    holder: LeaseHolder
    # Each endpoint's URL when the driver serves its simulator (one for all shards, so its
    # limits are the run's); None: the endpoint's own base_url.
    base_urls: tuple[str | None, ...] | None = None


@dataclass(frozen=True, slots=True)
class RunReport:
    result: RunResult
    setup: SetupReport | None
    run_dir: Path
    counts: Mapping[str, int]
    dataset: ExportReport | None  # None for a shard: the driver exports the merged run


def seeds_digest(path: Path) -> str:
    """sha256 of the seed file: a changed seed file changes content, so resume must notice."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _config_meta(config: Config) -> dict[str, str]:
    """The config as the run stores it: its snapshot and hash."""
    return {
        "config_json": orjson.dumps(config.snapshot(), option=orjson.OPT_SORT_KEYS).decode(),
        "config_hash": config.hash(),
    }


def _diff_line(key: str, old: object, new: object, safe: bool, added: bool) -> str:
    # A safe key added at its default is no change (config_diff): an added one here is content.
    change = f"new in this m2l, at its default {new!r}" if added else f"{old!r} → {new!r}"
    return f"  {key}: {change}" + ("" if safe else "   (changes content)")


def _meta_for(config: Config, taxonomy: Taxonomy, seeds_sha256: str) -> dict[str, str]:
    return {
        "m2l_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **_config_meta(config),
        "taxonomy_fingerprint": taxonomy.fingerprint,
        "seeds_sha256": seeds_sha256,
        "status": "running",
    }


def check_resume(
    meta: Mapping[str, str],
    config: Config,
    taxonomy: Taxonomy,
    *,
    seeds_sha256: str,
    force: bool,
) -> dict[str, str]:
    """Compare the stored config with this one; the meta keys to update, or ConfigError."""
    stored: dict[str, Any] = orjson.loads(meta["config_json"])
    snapshot, defaults = config.snapshot(), config_defaults()
    diffs = config_diff(stored, snapshot, defaults=defaults)
    # Content settings m2l gained since the run started cannot be "restored": they did not
    # exist. At their defaults they are the upgrade's change, not the user's: --force accepts.
    added = added_at_default(stored, snapshot, defaults)
    changed_files = []  # content the config names but does not hold
    if meta.get("taxonomy_fingerprint") != taxonomy.fingerprint:
        changed_files.append("taxonomy (prompt files)")
    if meta.get("seeds_sha256") != seeds_sha256:
        changed_files.append(f"seeds file {config.seeds.file} (contents)")
    if not diffs and not changed_files:
        return {"status": "running"}
    listing = "\n".join(
        [_diff_line(key, old, new, safe, key in added) for key, old, new, safe in diffs]
        + [f"  {name}: changed   (changes content)" for name in changed_files]
    )
    if changed_files or any(not safe and key not in added for key, _, _, safe in diffs):
        raise ConfigError(
            f"the config differs from the one run {config.run.name!r} started with:\n{listing}\n"
            "These changes alter what is generated, so they cannot continue this run: restore "
            "the old values, or set a new run.name to start a new run."
        )
    if not force:
        if any(not safe for *_, safe in diffs):
            started = meta.get("m2l_version", "an older version")
            raise ConfigError(
                f"the config differs from the one run {config.run.name!r} started with:\n"
                f"{listing}\nm2l {started} started this run; the settings marked new did not "
                "exist then, and this m2l's defaults for them may generate differently. Run "
                "again with --force to continue with them (finished conversations keep what "
                f"they have), finish the run with m2l {started}, or set a new run.name."
            )
        raise ConfigError(
            f"the config differs from the one run {config.run.name!r} started with:\n{listing}\n"
            "These changes alter cost or delivery, not content (prices, base_url, headers, "
            "query, timeouts, limits, budget, retries, concurrency); run again with --force to "
            "continue with them."
        )
    return {"status": "running", **_config_meta(config)}


def endpoint_of(config: Config, env: Mapping[str, str]) -> tuple[str, bool]:
    """Where requests go, for people: ("embedded simulator", True) or (base_url's host, False);
    with several endpoints, their hosts, each once."""
    if config.uses_simulator(env):
        return SIMULATOR, True
    hosts = dict.fromkeys(endpoint_host(e, False) for e in config.endpoints())
    return ", ".join(hosts), False


async def cancel_batches(config: Config, *, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """Cancel the run's batches still open on the provider: ``(batch id, status)`` each.

    Nothing else changes: the next ``m2l run`` collects what they finished and sends the rest
    again. Raises StateError when there is no run, a RequestError when the provider refuses.
    """
    if config.uses_simulator(env):
        # The embedded simulator's batches ended with the process that served them.
        return []
    async with GroupCommitWriter(config.run_dir / STATE_FILE, create=False) as writer:
        api = make_api(config.provider, config.provider.base_url, config.api_key(env))
        try:
            return await cancel_open_batches(api, writer)
        finally:
            await api.aclose()


async def execute_run(
    config: Config,
    *,
    env: Mapping[str, str],
    hooks: EventHook | None = None,
    options: RunOptions = RunOptions(),
    stop: StopControl | None = None,
    baseline: Callable[[ProgressSnapshot], None] | None = None,
    on_setup: Callable[[SetupReport], None] | None = None,
    final: Callable[[ProgressSnapshot], None] | None = None,
    shard: ShardRole | None = None,
) -> RunReport:
    """Run (or resume) the configured run to its end; raises ConfigError or StateError early.

    ``baseline`` receives the store's figures from before this session (for a display), on
    the event loop, before the first event of the run; ``on_setup`` receives what a new run's
    set-up selected (seeds asked, available and taken per language), before any request.
    ``final`` receives the store's figures once the run has ended, before RunFinished.
    """
    events: EventHook = hooks or Hooks()
    # Everything that can refuse the config is checked before the run's folder exists.
    check_endpoints(config, env)
    run_price(config)
    # A model m2l cannot price or that refuses a setting; a price table past its age.
    for warning in check_model(config, env):
        log.warning("%s", warning)
    profile = model_profile(config)
    taxonomy = load_taxonomy(config.taxonomy)
    run_dir = config.run_dir if shard is None else shard.store_dir
    # A process killed mid-write (status file, export) left its temp files: tidy them first.
    remove_stale_temp_files(run_dir, run_dir / "export")
    languages = load_languages()
    stop = stop or StopControl()
    # The tokenizer and the language model (about 0.5 s of CPU each) load in threads while the
    # store is set up, so neither holds up the first request: the budget and the prompter wait
    # for the tokenizer, validation (not the sends) for the language model.
    _preload(asyncio.to_thread(_preload_tokenizer, config))
    language_model = _preload(_load_language_model()) if config.quality.check_language else None
    async with (
        _NewFolder(run_dir) as folder,
        GroupCommitWriter(run_dir / STATE_FILE, create=shard is None, store=config.store) as writer,
    ):
        if shard is None:
            _refuse_sharded(await writer.run(journal.read_meta), config)
        try:
            setup = await _prepare(
                writer,
                config,
                taxonomy,
                languages,
                options,
                events,
                baseline,
                endpoint_of(config, env),
            )
        except ConfigError:
            folder.discard()  # set-up is one transaction: a refused one committed nothing
            raise
        if setup is not None and on_setup is not None:
            on_setup(setup)
        first_request_id = await writer.run(RequestLog.next_id)
        if shard is not None:
            first_request_id = max(first_request_id, shard.first_request_id)
        # The budget is rebuilt from the request log, so a cap holds across crashes.
        # The projection starts where `m2l estimate` does: the simulator's own reply lengths,
        # or typical ones for a real model, not every reply at max_tokens.
        lengths = partial(sim_outputs, config.sim) if config.uses_simulator(env) else None
        budget = await writer.run(
            lambda conn: load_budget(conn, config, events, reply_lengths=lengths)
        )
        outs = _EndpointsOut()
        events = Hooks([events, budget.admission, outs])
        events.on_event(budget.admission.snapshot())  # spend so far, before the first reply
        meta = await writer.run(journal.read_meta)
        adapted = _stored_adaptations(meta)
        earlier_caps = journal.adaptive_caps(meta)
        # Adaptive max_tokens starts from the replies earlier sessions of the run received.
        window = config.generation.adaptive_max_tokens.window
        replies = await writer.run(lambda conn: completion_lengths(conn, per_group=window))
        async with open_endpoints(
            config, env, profile, adapted=adapted, shared=shard.base_urls if shard else None
        ) as endpoints:
            first = endpoints[0]
            client, shape = first.client, first.shape
            base_url, api_key = first.base_url, first.api_key
            # One batcher for the store and the request log: their rows commit together.
            batcher = JournalBatcher(writer)
            store = RunStore(writer, batcher, config.store)
            scheduler = None
            if config.run.mode == "batch":
                result = await _run_batch_mode(
                    config, client, writer, batcher, store, budget, first_request_id,
                    base_url=base_url, api_key=api_key, events=events, stop=stop,
                    taxonomy=taxonomy, languages=languages, profile=profile, shape=shape,
                    ready=language_model,
                )  # fmt: skip
            else:
                accounting = RequestLog(
                    batcher,
                    model=config.provider.model,
                    next_request_id=first_request_id,
                    costs=budget.costs,
                    guard=budget.guard,
                    top_up=shard.holder.top_up if shard is not None else None,
                )
                scheduler = assemble(
                    config,
                    endpoints if len(endpoints) > 1 else client,
                    store=store,
                    accounting=accounting,
                    hooks=events,
                    stop=stop,
                    taxonomy=taxonomy,
                    languages=languages,
                    admission=budget.admission,
                    profile=profile,
                    shape=shape,
                    price=budget.costs.actual,
                    replies=replies,
                    output_price_ratio=_output_price_ratio(budget),
                    adaptive=config.generation.adaptive_max_tokens.active(
                        simulated=config.uses_simulator(env), tpm_limited=_tpm_limited(config)
                    ),
                    ready=language_model,
                )
                # While requests queue at a rate limit, flushing less often costs no throughput.
                batcher.pace_by(lambda: scheduler.rate_bound)
                if shard is None:
                    result = await _run_with_signals(scheduler, stop, config.run.grace_s, events)
                else:
                    shard.holder.bind(scheduler.limiters, budget.guard)
                    async with shard.holder:
                        result = await scheduler.run(grace_s=config.run.grace_s)
            learned = _learned(endpoints)
            caps = scheduler.warmups if scheduler is not None else None
            # Every task of the run has ended: attempts a stop cut short (a fatal error, the
            # second Ctrl-C, the grace period's end) can no longer be answered. Settle them as
            # unknown now, so spend and status are exact even if the run is never resumed.
            await batcher.flush()
            await writer.run(_settle_unknown)
            # The rejected outputs arrive a few at a time: one small row group per checkpoint.
            await writer.run(lambda conn: compact(conn, "rejections"))
        counts = await writer.run(journal.count_by_status)
        failures = await writer.run(journal.failed_by_reason)
        result = judge_finished(result, counts, by_family(failures), config.run.max_failed_share)
        # Why endpoints were taken out this session, for `m2l status` (a resume starts afresh).
        final_meta = {
            "status": result.status.value,
            "endpoints_out": outs.json(),
            "stop_message": result.message,
        }
        if isinstance(caps, LengthLearner):
            # How many caps this session sent from learned lengths, and how many as configured.
            sources = _add_caps(earlier_caps, caps.sources())
            final_meta["adaptive_caps"] = orjson.dumps(sources).decode()
        if learned != adapted:
            # What the server refused and what went out instead, so a resume starts there.
            final_meta["adapted_params"] = orjson.dumps(learned).decode()
        await writer.run(journal.write_meta(final_meta))
        if final is not None:
            # The end summary's wall time, utilisation and spend are the store's, as
            # `m2l status` reads them later: one run, one set of numbers.
            name = config.run.name
            final(await writer.run(lambda conn: store_snapshot(conn, run=name)))
        # The dataset so far, in the form trainers read; `m2l export` writes the other formats.
        dataset = None
        if shard is None:
            dataset = await writer.run(
                lambda conn: export_with(
                    conn, "messages-jsonl", default_output(config.run_dir, "messages-jsonl")
                )
            )
    events.on_event(RunFinished(result.status.value, result.message, _now()))
    return RunReport(result, setup, run_dir, counts, dataset)


async def _run_batch_mode(
    config: Config,
    client: ChatClient,
    writer: GroupCommitWriter,
    batcher: JournalBatcher,
    store: RunStore,
    budget: Budget,
    first_request_id: int,
    *,
    base_url: str,
    api_key: Secret | None,
    events: Hooks,
    stop: StopControl,
    taxonomy: Taxonomy,
    languages: LanguageTable,
    profile: ModelProfile,
    shape: RequestShape,
    ready: asyncio.Future[None] | None = None,
) -> RunResult:
    """The run in batch mode: steps go out as Batch API lines; batches outlive a stop."""
    counts = await writer.run(journal.count_by_status)
    unfinished = sum(n for status, n in counts.items() if status in ("pending", "active"))
    async with open_batch_mode(
        config.batch,
        provider=config.provider,
        base_url=base_url,
        api_key=api_key,
        online=client,
        writer=writer,
        batcher=batcher,
        model=config.provider.model,
        next_request_id=first_request_id,
        batch_costs=budget.costs,
        online_costs=budget.online_costs or budget.costs,
        guard=budget.guard,
        recount=budget.admission,
        unfinished=unfinished,
        hooks=events,
    ) as mode:
        events.add(mode.completer)
        scheduler = assemble(
            config,
            mode.completer,
            store=store,
            accounting=mode.accounting,
            hooks=events,
            stop=stop,
            taxonomy=taxonomy,
            languages=languages,
            admission=budget.admission,
            profile=profile,
            shape=shape,
            price=budget.costs.actual,
            ready=ready,
        )
        # Steps wait in batches that outlive the process: a stop does not wait for them.
        return await _run_with_signals(scheduler, stop, min(config.run.grace_s, 1.0), events)


async def prepare_store(
    config: Config,
    *,
    env: Mapping[str, str],
    hooks: EventHook,
    options: RunOptions = RunOptions(),
    baseline: Callable[[ProgressSnapshot], None] | None = None,
    on_setup: Callable[[SetupReport], None] | None = None,
) -> SetupReport | None:
    """Plan a new run in its store, or check a resumed one's config, as ``execute_run`` does
    before its first request (a sharded run's driver, before it splits the plan); reports
    RunStarted. Raises ConfigError or StateError, leaving no folder for a refused new run."""
    check_endpoints(config, env)
    run_price(config)
    for warning in check_model(config, env):
        log.warning("%s", warning)
    taxonomy = load_taxonomy(config.taxonomy)
    remove_stale_temp_files(config.run_dir, config.run_dir / "export")
    async with (
        _NewFolder(config.run_dir) as folder,
        GroupCommitWriter(config.run_dir / STATE_FILE, create=True, store=config.store) as writer,
    ):
        try:
            setup = await _prepare(
                writer, config, taxonomy, load_languages(), options, hooks, baseline,
                endpoint_of(config, env),
            )  # fmt: skip
        except ConfigError:
            folder.discard()
            raise
    if setup is not None and on_setup is not None:
        on_setup(setup)
    return setup


def _refuse_sharded(meta: Mapping[str, str], config: Config) -> None:
    """A sharded run's work is in its shards' stores: one process resuming it from the run's
    store would redo it. Raises ConfigError naming the command that resumes it."""
    shards = meta.get("shards")
    if shards is None:
        return
    where = config.source if config.source is not None else "CONFIG"
    raise ConfigError(
        f"run {config.run.name!r} was sharded over Ray ({shards} shards); its work is in its "
        f"shards' stores, so resume it the same way: m2l run {where} --ray --shards {shards}"
    )


class _NewFolder:
    """The run's folder, made by this call if it did not exist: ``discard`` removes it again
    (and the parents made with it) once the block has closed the store in it, so a config the
    set-up refuses (seed columns, quotas, weights naming nothing) leaves nothing behind."""

    def __init__(self, path: Path) -> None:
        top = None
        for folder in (path, *path.parents):
            if folder.exists():
                break
            top = folder
        self._top = top  # the highest folder this run creates; None: the run's folder exists
        self._discard = False

    def discard(self) -> None:
        self._discard = self._top is not None

    async def __aenter__(self) -> _NewFolder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._discard and self._top is not None:
            shutil.rmtree(self._top, ignore_errors=True)


async def _prepare(
    writer: GroupCommitWriter,
    config: Config,
    taxonomy: Taxonomy,
    languages: LanguageTable,
    options: RunOptions,
    hooks: EventHook,
    baseline: Callable[[ProgressSnapshot], None] | None,
    endpoint: tuple[str, bool],
) -> SetupReport | None:
    """Plan a new run, or check the config of a resumed one; reports RunStarted."""
    meta = await writer.run(journal.read_meta)
    # A seed file may be gigabytes: hash it once, off the event loop.
    seeds_sha256 = await anyio.to_thread.run_sync(seeds_digest, config.seeds.file)
    setup = None
    if "config_json" not in meta:
        # A new run (or one killed during set-up, which committed nothing): plan it in one
        # transaction, so set-up is all or nothing.
        run_meta = _meta_for(config, taxonomy, seeds_sha256)
        setup = await writer.run(plan_run(config, taxonomy, languages, run_meta))
    else:
        updates = check_resume(
            meta, config, taxonomy, seeds_sha256=seeds_sha256, force=options.force
        )
        await writer.run(journal.write_meta(updates))
        if options.retry_failed:
            await writer.run(journal.retry_failed)
    provider, simulated = endpoint
    where = {} if config.source is None else {"config_path": str(config.source.resolve())}
    # Attempts a kill or a fatal stop left reserved can no longer be in flight: settle them as
    # unknown (held at worst case, shown apart), before the budget reads the log.
    await writer.run(_settle_unknown)
    await writer.run(
        journal.write_meta(
            {
                "provider": provider,
                "model": config.provider.model,
                "simulated": "true" if simulated else "false",
                **where,  # so `m2l status` can give the exact command that continues the run
            }
        )
    )
    counts = await writer.run(journal.count_by_status)
    if baseline is not None:
        name = config.run.name
        baseline(await writer.run(lambda conn: store_snapshot(conn, run=name)))
    hooks.on_event(
        RunStarted(
            config.run.name,
            sum(counts.values()),
            sum(counts.get(s, 0) for s in ("done", "failed", "filtered")),
            *_limit_sums(config),
            config.budget.usd,
            _now(),
            provider=provider,
            model=config.provider.model,
            simulated=simulated,
            endpoints=tuple((e.name, e.model) for e in config.providers),
        )
    )
    return setup


def assemble(
    config: Config,
    client: Completer | Sequence[OpenEndpoint],
    *,
    store: ConversationStore,
    accounting: Accounting[Any],
    hooks: EventHook,
    stop: StopControl,
    taxonomy: Taxonomy,
    languages: LanguageTable,
    admission: Admission | None = None,
    profile: ModelProfile | None = None,
    shape: RequestShape | None = None,
    price: Callable[[Usage], float] | None = None,
    replies: Iterable[tuple[int, str, int, int]] = (),
    output_price_ratio: float = 4.0,
    adaptive: bool | None = None,
    ready: asyncio.Future[None] | None = None,
) -> Scheduler:
    """Limiter, dispatcher, prompter and scheduler, configured for this run, around the given
    store and accounting (benchmarks pass ones that record nothing). ``client`` is the one
    endpoint's, or several open endpoints (each gets its own limiter, gate and health watch).
    ``shape`` adapts requests to a refused parameter; ``price`` splits each reply's cost for
    the displays; ``replies`` (step, language code, completion tokens, cap) are what adaptive
    max_tokens learned before (``completion_lengths`` of the request log),
    ``output_price_ratio`` weighs a cut reply's output tokens against its prompt's;
    ``adaptive`` turns them on or off (None: as ``generation.adaptive_max_tokens.enabled``
    says, "auto" counting as a real provider); validation waits for ``ready`` (the language
    model loading)."""
    profile = profile or model_profile(config)
    batch = config.run.mode == "batch"
    health = RunHealth(config.retry, systematic_window=config.run.systematic_failure_window)
    if isinstance(client, Sequence):
        dispatcher = Dispatcher.over(
            EndpointPool([_endpoint(config, e) for e in client], hooks=hooks),
            policy=config.retry,
            accounting=accounting,
            hooks=hooks,
            health=health,
            flex_fallback_after_s=config.provider.flex_fallback_after_s,
            price=price,
        )
    else:
        entry = config.endpoints()[0]
        # Batch lines are not paced by the online limits (the Batch API has its own queue),
        # and their latency is a batch's: a fixed cap, never a concurrency probe.
        limits = (
            LimitsConfig(max_inflight=config.batch.max_active)
            if batch
            else config.endpoint_limits(entry)
        )
        dispatcher = Dispatcher(
            client,
            RateLimiter(limits),
            # Online, "auto" adapts and a number is a fixed cap; either way no request is sent
            # into a server queue it cannot get through before the read timeout. Batch lines
            # have none.
            gate=None
            if batch
            else ConcurrencyGate(fixed=limits.fixed_inflight, timeout_s=entry.read_timeout_s),
            policy=config.retry,
            accounting=accounting,
            hooks=hooks,
            health=health,
            adapter=shape,
            flex_fallback_after_s=config.provider.flex_fallback_after_s,
            price=price,
            endpoint=entry.name,
            model=entry.model,
        )
    counter = TokenCounter(
        config.provider.model, unknown_model_encoding=config.provider.unknown_model_encoding
    )
    learn = config.generation.adaptive_max_tokens
    # Batch lines are not charged against a TPM limit at admission: nothing to save there.
    lengths = None
    if adaptive is None:
        adaptive = learn.active(simulated=False, tpm_limited=_tpm_limited(config))
    if adaptive and not batch:
        rule = CapRule(
            learn.max_redone_share,
            learn.max_extra_money_share,
            learn.min_samples,
            output_price_ratio,
        )
        lengths = LengthLearner(rule, window=learn.window)
    # Each step's cap: the reply's room plus, for a reasoning model, its reasoning's room.
    prompter = TaxonomyPrompter(
        taxonomy,
        counter,
        profile.step_caps,
        config.quality,
        languages=languages,
        lengths=lengths,
        group_by=learn.group_by,
    )
    prompter.learn(replies)
    return Scheduler(
        store=store,
        dispatcher=dispatcher,
        prompter=prompter,
        validator=QualityValidator(languages, config.quality),
        generation=config.generation,
        rules=StepRules(config.generation.max_regenerations, config.quality.keep_partial),
        max_active=config.batch.max_active if batch else config.run.max_active,
        stop=stop,
        admission=admission,
        hooks=hooks,
        ready=ready,
        warmups=lengths,
    )


def _endpoint(config: Config, opened: OpenEndpoint) -> Endpoint:
    """One of several endpoints with its own limiter, gate and request health watch (the run's
    conversation watch stays the dispatcher's)."""
    entry = opened.entry
    limits = config.endpoint_limits(entry)
    return Endpoint(
        entry.name,
        entry.model,
        opened.client,
        RateLimiter(limits),
        ConcurrencyGate(fixed=limits.fixed_inflight, timeout_s=entry.read_timeout_s),
        RunHealth(config.retry, systematic_window=0),
        opened.shape,
        entry.weight,
        setting=config.where(entry),
    )


def _limit_sums(config: Config) -> tuple[float | None, float | None]:
    """The run's rpm and tpm: the sums of its endpoints' (None when one has no such limit)."""
    limits = [config.endpoint_limits(e) for e in config.endpoints()]
    rpm = [x.rpm for x in limits]
    tpm = [x.tpm for x in limits]
    return (
        None if None in rpm else sum(x or 0.0 for x in rpm),
        None if None in tpm else sum(x or 0.0 for x in tpm),
    )


class _EndpointsOut:
    """Collects why endpoints were taken out (EndpointOut events), by endpoint."""

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}

    def on_event(self, event: Event) -> None:
        if isinstance(event, EndpointOut):
            self.messages[event.endpoint] = event.message

    def json(self) -> str:
        return orjson.dumps(self.messages).decode()


def _learned(endpoints: Sequence[OpenEndpoint]) -> dict[str, str]:
    """What the endpoints' servers refused and what goes out instead, for a resume."""
    learned: dict[str, str] = {}
    for opened in endpoints:
        learned.update(opened.shape.adapted)
    return learned


def _preload_tokenizer(config: Config) -> None:
    """Build the run's encoding (get_encoding keeps it); an error is left to the real use."""
    with contextlib.suppress(Exception):
        TokenCounter(
            config.provider.model, unknown_model_encoding=config.provider.unknown_model_encoding
        )


async def _load_language_model() -> None:
    """Load the language-ID model in a thread; raises FatalRunError if it cannot be loaded."""
    try:
        await asyncio.to_thread(default_detector().warm_up)
    except Exception as exc:
        raise FatalRunError(f"the language-ID model could not be loaded: {exc}") from exc


def _preload(work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
    """Start ``work`` now; an error nobody awaits (the run failed first) is not logged."""
    future = asyncio.ensure_future(work)
    future.add_done_callback(_seen)
    return future


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _settle_unknown(conn: duckdb.DuckDBPyConnection) -> int:
    """Settle attempts a kill left reserved as unknown, except lines of the provider's batches
    (batch mode collects their outcomes when it polls them)."""
    awaited = batchstore.AWAITED_REQUESTS if batchstore.has_tables(conn) else None
    return settle_unknown(conn, awaited=awaited)


async def _run_with_signals(
    scheduler: Scheduler, stop: StopControl, grace_s: float, events: EventHook
) -> RunResult:
    """Run the scheduler with SIGINT/SIGTERM wired to a graceful stop (twice: at once)."""
    loop = asyncio.get_running_loop()
    installed = []

    def on_signal(reason: str) -> None:
        if not stop.requested:  # the first: displays show "stopping" for the grace period
            events.on_event(RunStopping(reason, grace_s, _now()))
        stop.request(reason)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, f"stopped by {sig.name}")
            installed.append(sig)
    try:
        return await scheduler.run(grace_s=grace_s)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _stored_adaptations(meta: Mapping[str, str]) -> dict[str, str]:
    """The parameter adaptations an earlier session of the run recorded (none if unreadable)."""
    return {str(k): str(v) for k, v in journal.meta_object(meta, "adapted_params").items()}


def _add_caps(
    a: Mapping[str, Mapping[str, int]], b: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    out = {kind: dict(counts) for kind, counts in a.items()}
    for kind, counts in b.items():
        mine = out.setdefault(kind, {})
        for source, n in counts.items():
            mine[source] = mine.get(source, 0) + n
    return out


def _tpm_limited(config: Config) -> bool:
    """Whether a TPM limit is configured for any of the run's endpoints."""
    return any(config.endpoint_limits(e).tpm is not None for e in config.endpoints())


def _output_price_ratio(budget: Budget) -> float:
    """The model's output price over its input price (4, gpt-4o's, when it has no price)."""
    price = budget.price
    if price is None or price.input_pico <= 0 or price.output_pico <= 0:
        return 4.0
    return price.output_pico / price.input_pico


def _now() -> float:
    return time.monotonic()


def exit_code(status: RunStatus) -> int:
    """Process exit code for a run's end: 0 finished, 130 interrupted, 3 budget, 1 failed."""
    return {
        RunStatus.FINISHED: 0,
        RunStatus.INTERRUPTED: 130,
        RunStatus.BUDGET_EXHAUSTED: 3,
        RunStatus.FAILED: 1,
    }[status]
