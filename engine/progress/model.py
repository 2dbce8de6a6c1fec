"""The progress model: an event hook that keeps a run's figures in O(1) per event.

Nothing here raises on an event (a hook must never take the run down); ``snapshot`` is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from engine.clock import Clock
from engine.events import (
    BatchUpdate,
    BudgetUpdate,
    ConversationFinished,
    ConversationStarted,
    EndpointOut,
    Event,
    OutputRejected,
    RateLimitHit,
    RequestDone,
    RequestFailed,
    RequestRetried,
    RequestSent,
    RunFinished,
    RunStarted,
    RunStopping,
    ShardsUpdate,
    StepDone,
)
from engine.progress.rates import SlidingCounter
from engine.progress.snapshot import (
    EndpointProgress,
    LanguageProgress,
    ProgressSnapshot,
    language_eta,
    pairs,
    slowest_first,
)
from engine.reasons import reason_family

__all__ = ["ProgressModel"]

# Request rates are what providers limit per minute, so they use exactly a minute. Conversations
# finish a few per minute per language, so their rates use a longer, coarser window to be stable.
_REQUEST_WINDOW = (60.0, 1.0)
_CONVERSATION_WINDOW = (600.0, 10.0)
_MAX_MESSAGE = 500  # a last-error message longer than this is cut: displays show one line


class _Language:
    """One language's running counts (mutable; only the model touches it)."""

    __slots__ = ("active", "done", "failed", "filtered", "finishes", "total")

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.filtered = 0
        self.active = 0
        self.finishes = SlidingCounter(*_CONVERSATION_WINDOW)


class _Endpoint:
    """One endpoint's running counts (mutable; only the model touches it)."""

    __slots__ = ("cost", "failed", "hits", "latency", "model", "ok", "out", "sent", "tokens")

    def __init__(self, model: str = "") -> None:
        self.model = model
        self.sent = self.ok = self.hits = self.failed = self.tokens = 0
        self.cost = self.latency = 0.0
        self.out: str | None = None


class ProgressModel:
    """Aggregates engine events into counters and sliding windows; an ``EventHook``.

    ``baseline`` is the store's snapshot from before this session (see
    ``engine.progress.store.store_snapshot``): with it, counts cover the whole run with their
    breakdowns; without it, earlier sessions are one ``finished_before`` count from RunStarted.
    All times come from ``clock`` (the events' own ``t`` is not needed), so rates and ages in a
    snapshot are consistent with the moment it is taken.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        baseline: ProgressSnapshot | None = None,
        language_totals: Mapping[str, int] | None = None,
    ) -> None:
        self._clock = clock
        self._run = ""
        self._provider = ""
        self._unit = "conversations"
        self._final: ProgressSnapshot | None = None
        self._model = ""
        self._simulated = False
        self._state = "starting"
        self._message = ""
        self._started = clock.now()
        self._ended: float | None = None
        self._total = 0
        self._finished_before = 0
        self._rpm_limit: float | None = None
        self._tpm_limit: float | None = None
        self._cap: float | None = None
        # conversations, this session
        self._done = 0
        self._failed = 0
        self._filtered = 0
        self._active = 0
        self._failed_by_reason: dict[str, int] = {}
        self._rejected_by_reason: dict[str, int] = {}
        self._rejected_usd = 0.0
        self._filtered_by_reason: dict[str, int] = {}
        self._steps: dict[str, int] = {}
        self._finishes = SlidingCounter(*_CONVERSATION_WINDOW)
        self._languages: dict[str, _Language] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._baseline = ProgressSnapshot()
        if baseline is not None:
            self.load_baseline(baseline)
        if language_totals:
            self.set_language_totals(language_totals)
        # requests, this session (the in-flight map is keyed by request key: a retry reuses it)
        self._inflight: dict[str, str] = {}
        self._inflight_by_kind: dict[str, int] = {}
        self._sent = 0
        self._ok = 0
        self._failed_requests = 0
        self._retries = 0
        self._hits = 0
        self._errors: dict[str, int] = {}
        self._last_error: tuple[str, str, float] | None = None
        self._paused_until = -math.inf
        self._sent_window = SlidingCounter(*_REQUEST_WINDOW)
        self._charged_window = SlidingCounter(*_REQUEST_WINDOW)
        self._used_window = SlidingCounter(*_REQUEST_WINDOW)
        self._latency_window = SlidingCounter(*_REQUEST_WINDOW)
        self._replies_window = SlidingCounter(*_REQUEST_WINDOW)
        self._queued_window = SlidingCounter(*_REQUEST_WINDOW)
        self._queued_total = 0.0
        self._latency_total = 0.0
        self._concurrency: int | None = None
        # The busiest figures add up in plain attributes for the current second and are folded
        # into their windows once per second: at thousands of events a second, a window update
        # per event was most of the model's cost.
        self._second = -math.inf  # start of the second being accumulated
        self._acc_sent = 0
        self._acc_charged = 0
        self._acc_replies = 0
        self._acc_used = 0
        self._acc_latency = 0.0
        self._acc_queued = 0.0
        self._charged = 0
        self._tokens_in = 0
        self._tokens_out = 0
        self._tokens_reasoning = 0
        self._tokens_cached = 0
        self._reasoning_usd = 0.0
        self._cache_saved_usd = 0.0
        # money: the ledger's figures when it reports, else the replies' costs
        self._cost = 0.0
        self._budget: BudgetUpdate | None = None
        self._batches: BatchUpdate | None = None
        self._shards: ShardsUpdate | None = None
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            RunStarted: self._run_started,
            RequestSent: self._request_sent,
            RequestDone: self._request_done,
            RequestRetried: self._request_retried,
            RateLimitHit: self._rate_limit_hit,
            RequestFailed: self._request_failed,
            ConversationStarted: self._conversation_started,
            StepDone: self._step_done,
            OutputRejected: self._output_rejected,
            ConversationFinished: self._conversation_finished,
            BudgetUpdate: self._budget_update,
            BatchUpdate: self._batch_update,
            ShardsUpdate: self._shards_update,
            RunFinished: self._run_finished,
            RunStopping: self._run_stopping,
            EndpointOut: self._endpoint_out,
        }

    def __repr__(self) -> str:
        return f"<ProgressModel {self._run or '?'} {self._state} active={self._active}>"

    @property
    def state(self) -> str:
        return self._state

    def load_final(self, final: ProgressSnapshot) -> None:
        """Take the run's end figures from the store (``store_snapshot``), so the summary and a
        later ``m2l status`` give the same wall time, utilisation, tokens and spend."""
        self._final = final

    def load_baseline(self, baseline: ProgressSnapshot) -> None:
        """Count what earlier sessions finished, from the store (``store_snapshot``).

        Call it before this session's conversations start finishing (before or after
        RunStarted): it replaces the reasons and per-language counts with the store's.
        """
        self._baseline = baseline
        self._run = self._run or baseline.run
        self._total = max(self._total, baseline.total)
        self._finished_before = baseline.finished_before  # the breakdown replaces the lump
        self._rpm_limit = self._rpm_limit or baseline.rpm_limit
        self._tpm_limit = self._tpm_limit or baseline.tpm_limit
        self._cap = self._cap if self._cap is not None else baseline.cap_usd
        self._failed_by_reason = dict(baseline.failed_by_reason)
        self._rejected_by_reason = dict(baseline.rejected_by_reason)
        self._rejected_usd = baseline.rejected_usd
        self._filtered_by_reason = dict(baseline.filtered_by_reason)
        for lang in baseline.languages:
            entry = self._language(lang.language)
            entry.total = lang.total
            entry.done, entry.failed, entry.filtered = lang.done, lang.failed, lang.filtered

    def set_language_totals(self, totals: Mapping[str, int]) -> None:
        """Say how many conversations each language has in the run, so languages show ETAs."""
        for language, total in totals.items():
            self._language(language).total = total

    # --- events ----------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Update the counters for one event; unknown event types are ignored."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _language(self, name: str) -> _Language:
        entry = self._languages.get(name)
        if entry is None:
            entry = self._languages[name] = _Language()
        return entry

    def _endpoint(self, name: str) -> _Endpoint:
        entry = self._endpoints.get(name)
        if entry is None:
            entry = self._endpoints[name] = _Endpoint()
        return entry

    def _endpoint_out(self, e: EndpointOut) -> None:
        self._endpoint(e.endpoint).out = e.message[:_MAX_MESSAGE]

    def _run_started(self, e: RunStarted) -> None:
        for name, model in e.endpoints:
            self._endpoint(name).model = model
        self._run = e.run
        self._provider, self._model, self._simulated = e.provider, e.model, e.simulated
        self._unit = e.unit
        self._total = e.conversations_total
        if not self._baseline.finished:  # with a baseline, its breakdown already counts these
            self._finished_before = e.conversations_done
        self._rpm_limit = e.rpm or self._rpm_limit
        self._tpm_limit = e.tpm or self._tpm_limit
        self._cap = e.budget_usd if e.budget_usd is not None else self._cap
        self._state = "running"
        self._started = self._clock.now()
        self._ended = None

    def _fold(self) -> None:
        """Add the current second's sums to the windows and start a new second."""
        t = self._second
        if self._acc_sent:
            self._sent_window.add(t, self._acc_sent)
            self._charged_window.add(t, self._acc_charged)
            self._queued_window.add(t, self._acc_queued)
            self._acc_sent = self._acc_charged = 0
            self._acc_queued = 0.0
        if self._acc_replies:
            self._replies_window.add(t, self._acc_replies)
            self._used_window.add(t, self._acc_used)
            self._latency_window.add(t, self._acc_latency)
            self._acc_replies = self._acc_used = 0
            self._acc_latency = 0.0
        self._second = math.floor(self._clock.now())

    def _request_sent(self, e: RequestSent) -> None:
        if self._clock.now() >= self._second + 1.0:
            self._fold()
        charged = e.prompt_tokens + e.max_tokens
        self._sent += 1
        self._charged += charged
        self._acc_sent += 1
        self._acc_charged += charged
        self._acc_queued += e.queued_s
        self._queued_total += e.queued_s
        if e.concurrency is not None:
            self._concurrency = e.concurrency
        kind = e.kind or "other"
        previous = self._inflight.get(e.key)
        if previous is not None:  # sent again without an outcome event: count it once
            self._inflight_by_kind[previous] -= 1
        self._inflight[e.key] = kind
        self._inflight_by_kind[kind] = self._inflight_by_kind.get(kind, 0) + 1
        self._endpoint(e.endpoint).sent += 1

    def _request_ended(self, key: str) -> None:
        kind = self._inflight.pop(key, None)
        if kind is not None:
            self._inflight_by_kind[kind] -= 1

    def _request_done(self, e: RequestDone) -> None:
        if self._clock.now() >= self._second + 1.0:
            self._fold()
        self._request_ended(e.key)
        self._ok += 1
        self._tokens_in += e.prompt_tokens
        self._tokens_out += e.completion_tokens
        self._tokens_reasoning += e.reasoning_tokens
        self._tokens_cached += e.cached_tokens
        self._reasoning_usd += e.reasoning_usd
        self._cache_saved_usd += e.cache_saved_usd
        self._cost += e.cost_usd
        self._acc_replies += 1
        self._acc_used += e.prompt_tokens + e.completion_tokens
        self._acc_latency += e.latency_s
        self._latency_total += e.latency_s
        endpoint = self._endpoint(e.endpoint)
        endpoint.ok += 1
        endpoint.tokens += e.prompt_tokens + e.completion_tokens
        endpoint.cost += e.cost_usd
        endpoint.latency += e.latency_s

    def _error(self, error_class: str, message: str) -> None:
        self._errors[error_class] = self._errors.get(error_class, 0) + 1
        self._last_error = (error_class, message[:_MAX_MESSAGE], self._clock.now())

    def _request_retried(self, e: RequestRetried) -> None:
        self._request_ended(e.key)
        self._retries += 1
        self._error(e.error_class, e.message)
        self._endpoint(e.endpoint).failed += 1

    def _rate_limit_hit(self, e: RateLimitHit) -> None:
        self._request_ended(e.key)
        self._hits += 1
        self._endpoint(e.endpoint).hits += 1
        self._paused_until = max(self._paused_until, self._clock.now() + e.pause_s)

    def _request_failed(self, e: RequestFailed) -> None:
        self._request_ended(e.key)
        self._failed_requests += 1
        self._error(e.error_class, e.message)
        if e.endpoint:
            self._endpoint(e.endpoint).failed += 1

    def _conversation_started(self, e: ConversationStarted) -> None:
        self._active += 1
        self._language(e.language).active += 1

    def _output_rejected(self, e: OutputRejected) -> None:
        self._rejected_by_reason[e.reason] = self._rejected_by_reason.get(e.reason, 0) + 1
        self._rejected_usd += e.cost_usd

    def _step_done(self, e: StepDone) -> None:
        kind = e.kind or "other"
        self._steps[kind] = self._steps.get(kind, 0) + 1

    def _conversation_finished(self, e: ConversationFinished) -> None:
        now = self._clock.now()
        self._active = max(self._active - 1, 0)
        lang = self._language(e.language)
        lang.active = max(lang.active - 1, 0)
        # Near-identical reasons (34 malformed bodies that began differently) are one line.
        reason = reason_family(e.reason)
        if e.status == "done":
            self._done += 1
            lang.done += 1
        elif e.status == "filtered":
            self._filtered += 1
            lang.filtered += 1
            self._filtered_by_reason[reason] = self._filtered_by_reason.get(reason, 0) + 1
        else:  # "failed", or a status this model does not know: never lose a finish
            self._failed += 1
            lang.failed += 1
            self._failed_by_reason[reason] = self._failed_by_reason.get(reason, 0) + 1
        self._finishes.add(now)
        lang.finishes.add(now)

    def _endpoint_rows(self, elapsed: float) -> tuple[EndpointProgress, ...]:
        """Each endpoint's figures: this session's added to earlier sessions' (the store's);
        its requests per minute are this session's."""
        base = {e.name: e for e in self._baseline.endpoints}
        names = [*self._endpoints, *(n for n in base if n not in self._endpoints)]
        minutes = elapsed / 60
        rows = []
        for name in names:
            live = self._endpoints.get(name) or _Endpoint()
            old = base.get(name) or EndpointProgress(name)
            ok = old.ok + live.ok
            latency = (old.latency_s or 0.0) * old.ok + live.latency
            rows.append(
                EndpointProgress(
                    name,
                    live.model or old.model,
                    sent=old.sent + live.sent,
                    ok=ok,
                    rate_limited=old.rate_limited + live.hits,
                    failed=old.failed + live.failed,
                    tokens=old.tokens + live.tokens,
                    cost_usd=old.cost_usd + live.cost,
                    latency_s=latency / ok if ok else None,
                    rpm=live.sent / minutes if minutes > 0 else 0.0,
                    out=live.out,
                )
            )
        return tuple(rows)

    def _budget_update(self, e: BudgetUpdate) -> None:
        self._budget = e
        self._cap = e.cap_usd

    def _batch_update(self, e: BatchUpdate) -> None:
        self._batches = e

    def _shards_update(self, e: ShardsUpdate) -> None:
        self._shards = e

    def _run_stopping(self, e: RunStopping) -> None:
        if self._state == "running":
            self._state = "stopping"
            self._message = f"{e.reason}: in-flight requests get up to {e.grace_s:g} s to finish"

    def _run_finished(self, e: RunFinished) -> None:
        self._state = e.status
        self._message = e.message
        self._ended = self._clock.now()

    # --- reading ---------------------------------------------------------------------------

    def snapshot(self) -> ProgressSnapshot:
        """Every figure the displays show, as of now."""
        self._fold()  # the current second's sums count too; later ones join the same bucket
        now = self._clock.now()
        base = self._baseline
        end = self._ended if self._ended is not None else now
        elapsed = max(end - self._started, 0.0)
        since = self._started
        done = base.done + self._done
        failed = base.failed + self._failed
        filtered = base.filtered + self._filtered
        finished = done + failed + filtered + self._finished_before
        conv_rate = self._finishes.rate(now, since)  # per second
        remaining = max(self._total - finished, 0)
        eta = _eta(remaining, conv_rate)
        rpm = self._sent_window.rate(now, since) * 60
        tpm = self._charged_window.rate(now, since) * 60
        binding, mean_util = _binding(
            self._sent, self._charged, elapsed, self._rpm_limit, self._tpm_limit
        )
        replies = self._replies_window.total(now)
        sent = self._sent_window.total(now)
        errors = dict(base.errors_by_class)
        for name, n in self._errors.items():
            errors[name] = errors.get(name, 0) + n
        last_class, last_message, last_age = _last_error(self._last_error, now, base)
        spent, reserved, projected = self._money(finished)
        batches = self._batches
        snapshot = ProgressSnapshot(
            run=self._run,
            provider=self._provider,
            unit=self._unit,
            model=self._model,
            simulated=self._simulated,
            state=self._state,
            message=self._message,
            elapsed_s=elapsed,
            total=self._total,
            done=done,
            failed=failed,
            filtered=filtered,
            finished_before=self._finished_before,
            active=self._active,
            failed_by_reason=pairs(self._failed_by_reason),
            filtered_by_reason=pairs(self._filtered_by_reason),
            steps_by_kind=pairs(self._steps),
            outputs_rejected=sum(self._rejected_by_reason.values()),
            rejected_by_reason=pairs(self._rejected_by_reason),
            rejected_usd=self._rejected_usd,
            conv_per_min=conv_rate * 60,
            eta_s=None if not self._total else eta,
            in_flight=len(self._inflight),
            in_flight_by_kind=pairs(self._inflight_by_kind),
            requests_sent=base.requests_sent + self._sent,
            requests_ok=base.requests_ok + self._ok,
            requests_failed=base.requests_failed + self._failed_requests,
            retries=base.retries + self._retries,
            rate_limit_hits=base.rate_limit_hits + self._hits,
            errors_by_class=pairs(errors),
            last_error_class=last_class,
            last_error=last_message,
            last_error_age_s=last_age,
            paused_s=max(self._paused_until - now, 0.0),
            latency_s=self._latency_window.total(now) / replies if replies else None,
            queued_s=self._queued_window.total(now) / sent if sent else None,
            server_mean_s=self._latency_total / self._ok if self._ok else None,
            queued_mean_s=self._queued_total / self._sent if self._sent else None,
            concurrency_limit=self._concurrency,
            rpm=rpm,
            rpm_limit=self._rpm_limit,
            tpm=tpm,
            tpm_limit=self._tpm_limit,
            tokens_per_min=self._used_window.rate(now, since) * 60,
            binding_limit=binding,
            mean_utilisation=mean_util,
            tokens_in=base.tokens_in + self._tokens_in,
            tokens_out=base.tokens_out + self._tokens_out,
            tokens_reasoning=base.tokens_reasoning + self._tokens_reasoning,
            tokens_cached=base.tokens_cached + self._tokens_cached,
            reasoning_usd=base.reasoning_usd + self._reasoning_usd,
            cache_saved_usd=base.cache_saved_usd + self._cache_saved_usd,
            spent_usd=spent,
            reserved_usd=reserved,
            unknown_usd=self._baseline.unknown_usd,
            config_path=self._baseline.config_path,
            cap_usd=self._cap,
            projected_usd=projected,
            languages=self._language_rows(now, since, eta),
            endpoints=self._endpoint_rows(elapsed),
            batches_open=None if batches is None else batches.open_batches,
            batches_made=0 if batches is None else batches.batches_created,
            batches_by_status=() if batches is None else pairs(dict(batches.by_status)),
            batch_requests_done=0 if batches is None else batches.requests_done,
            batch_requests_total=0 if batches is None else batches.requests_total,
            batch_oldest_age_s=None
            if batches is None or batches.oldest_age_s is None
            else batches.oldest_age_s + (now - batches.t),
            # In batch mode what is reserved is held by lines in batches (or about to be).
            batch_held_usd=None if batches is None else reserved,
            batch_waiting=0 if batches is None else batches.waiting,
            shards=_shard_rows(self._shards),
        )
        final = self._final
        if final is None or self._state in ("running", "stopping"):
            return snapshot
        return replace(
            snapshot,
            elapsed_s=final.elapsed_s,
            binding_limit=final.binding_limit,
            mean_utilisation=final.mean_utilisation,
            tokens_in=final.tokens_in,
            tokens_out=final.tokens_out,
            spent_usd=final.spent_usd,
            reserved_usd=final.reserved_usd,
            unknown_usd=final.unknown_usd,
        )

    def _money(self, finished: int) -> tuple[float, float, float | None]:
        """Spent, reserved and projected USD: the ledger's when it has reported, else estimated."""
        if self._budget is not None:
            b = self._budget
            projected = b.projected_usd
            spent, reserved = b.spent_usd, b.reserved_usd
        else:
            spent, reserved, projected = self._baseline.spent_usd + self._cost, 0.0, None
        if projected is None and finished and self._total:
            # Spend so far includes the active conversations' first steps, so this errs high,
            # which is the safe side for a number people compare against a cap.
            projected = spent * max(self._total / finished, 1.0)
        return spent, reserved, projected

    def _language_rows(
        self, now: float, since: float, overall_eta: float | None
    ) -> tuple[LanguageProgress, ...]:
        rows = []
        for name, lang in self._languages.items():
            rate = lang.finishes.rate(now, since)
            finished = lang.done + lang.failed + lang.filtered
            eta = (
                None
                if lang.total is None
                else language_eta(max(lang.total - finished, 0), rate, overall_eta)
            )
            rows.append(
                LanguageProgress(
                    language=name,
                    total=lang.total,
                    done=lang.done,
                    failed=lang.failed,
                    filtered=lang.filtered,
                    active=lang.active,
                    rate_per_min=rate * 60,
                    eta_s=eta,
                )
            )
        rows.sort(key=slowest_first)
        return tuple(rows)


def _shard_rows(e: ShardsUpdate | None) -> tuple[tuple[int, int, int, int], ...]:
    if e is None:
        return ()
    return tuple(zip(e.finished, e.total, e.restarts, e.share_pct, strict=True))


def _eta(remaining: int, rate_per_s: float) -> float | None:
    if remaining <= 0:
        return 0.0
    if rate_per_s <= 0:
        return None
    return remaining / rate_per_s


def _binding(
    sent: int, charged: int, elapsed: float, rpm_limit: float | None, tpm_limit: float | None
) -> tuple[str | None, float | None]:
    """Which limit the run leaned on hardest, and its mean utilisation over ``elapsed``."""
    minutes = elapsed / 60
    if minutes <= 0:
        return None, None
    candidates = []
    if rpm_limit:
        candidates.append((sent / minutes / rpm_limit, "rpm"))
    if tpm_limit:
        candidates.append((charged / minutes / tpm_limit, "tpm"))
    if not candidates:
        return None, None
    util, name = max(candidates)
    return name, util


def _last_error(
    last: tuple[str, str, float] | None, now: float, base: ProgressSnapshot
) -> tuple[str | None, str | None, float | None]:
    if last is not None:
        return last[0], last[1], max(now - last[2], 0.0)
    # An error from an earlier session has no meaningful age on this session's clock.
    return base.last_error_class, base.last_error, None
