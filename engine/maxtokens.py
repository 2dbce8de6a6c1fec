"""Adaptive max_tokens: what a step's replies really need, learned from the run's own replies,
and the cap that charges the rate limit least.

OpenAI counts ``prompt + max_tokens`` against TPM when it admits a request, so a cap far above
what replies use wastes the limit. A cap too low cuts replies, and the quality gate never keeps
a cut reply: it is paid for and asked again with the configured room. For each step kind and
language (or script), ``LengthLearner`` keeps a window of recent completion lengths (a reply cut
at its cap is a lower bound, which the estimate of the tail accounts for) and ``choose_cap``
picks the cap with the lowest expected charge,

    (prompt + cap) + P(cut) x (prompt + full cap),

among caps whose share of cut replies and whose extra money stay within ``CapRule``. The tail
P(length >= cap) is the larger of the Kaplan-Meier estimate and a fitted log-normal's predictive
tail, so a few dozen samples cannot talk the cap down past what the next replies need.

A step kind learns from every group at once: its pool holds each reply in English tokens
(divided by its language's token-cost factor), and a group's caps are the pool's, scaled back
by the group's own scale: the known factor times what the group's replies say about it (their
mean log length in English tokens against the pool's, shrunk towards the known factor as if it
were ``_PRIOR_REPLIES`` replies, its uncertainty widening the tail). So a step kind adapts after
``min_samples`` replies in all, not per language, and a language whose known factor is off is
corrected by a few dozen of its own replies. A group with ``_OWN_FIT`` times ``min_samples``
replies of its own (at most ``window``) uses its own fit, whatever shape it has; until the pool
has ``min_samples``, the configured cap goes out.

While a step kind's pool is short of ``min_samples``, only as many of its first tries go out
(with the configured cap) as the pool still needs: ``LengthLearner.warmup`` says WAIT for the
rest until those replies are in. Otherwise a run's first burst (a rate limit's whole bucket,
and every request that queued behind it, is decided before any reply is back) goes out at the
configured caps. Each cap decided is counted by its source (``LengthLearner.sources``), so a
run can say how many of its requests had a learned cap. Pure: no clock, no I/O.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CapChoice",
    "CapRule",
    "CapSource",
    "LengthFit",
    "LengthLearner",
    "Warmup",
    "choose_cap",
]

_SIGMA_FLOOR = 0.05  # a group of identical lengths still has some spread in log space
_TAIL_SAMPLES = 10  # replies at least this long before their share alone judges a cap
_CANDIDATES = 96  # caps tried between the smallest sensible one and the full cap
_REFIT_SHARE = 0.05  # a group's fit is redone once its window holds this share of new samples
_PROMPT_BUCKET = 1.1  # choices are cached per prompt length, in buckets of 10%
_POOLED = "*"  # the group of a step kind's replies from every group, in English tokens
_PRIOR_REPLIES = 10.0  # the known token-cost factor weighs as much as this many replies
_OWN_FIT = 10  # a group's own fit is used once it has this many times min_samples replies
_MAX_SHIFT = math.log(4.0)  # a group's learned scale stays within 4x of its known factor
_SHIFT_BUCKET = 0.02  # choices are cached per group scale, in buckets of 2% (log space)


class Warmup(enum.Enum):
    """Whether a step's first try may go out now, while its step kind learns."""

    LEARNED = "learned"  # the step kind has a fit: a learned cap goes out
    PROBE = "probe"  # not yet: it goes out with the configured cap, its reply teaches the pool
    WAIT = "wait"  # the replies of the probes already out are enough: wait for them


class CapSource(enum.Enum):
    """Why a cap went out."""

    CONFIGURED = "configured"  # the step kind has fewer than min_samples replies
    POOLED = "pooled"  # the step kind's pool, scaled by the group's token cost
    OWN = "own"  # the group's own replies
    FULL = "full"  # learned, but no cap below the configured one passes the rule


@dataclass(frozen=True, slots=True)
class CapRule:
    """What an adaptive cap may cost: the share of replies cut and redone, the extra money
    they cost (a share of the expected money), samples needed first, the output price over
    the input price."""

    max_redone_share: float = 0.01
    max_extra_money_share: float = 0.02
    min_samples: int = 50
    output_price_ratio: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 < self.max_redone_share < 1.0:
            raise ValueError(f"max_redone_share = {self.max_redone_share}: expected 0 < x < 1")
        if self.max_extra_money_share <= 0.0:
            raise ValueError(f"max_extra_money_share = {self.max_extra_money_share}: expected > 0")
        if self.min_samples < 2:
            raise ValueError(f"min_samples = {self.min_samples}: expected at least 2")
        if not self.output_price_ratio > 0:
            raise ValueError(f"output_price_ratio = {self.output_price_ratio}: expected > 0")


@dataclass(frozen=True, slots=True)
class CapChoice:
    """A cap and what is expected of it: the share of replies cut, tokens charged per reply
    (the redo included) and money per reply in input-token units (the redo's cut try included)."""

    cap: int
    redone: float
    charge: float
    money: float


class LengthFit:
    """The length distribution of one group, fitted once from its samples."""

    __slots__ = ("_edge", "_km_surv", "_km_times", "mean", "mu", "n", "sigma")

    def __init__(self, samples: Iterable[tuple[int, bool]]) -> None:
        """``samples``: (completion tokens, cut) pairs; cut means the length was at least that."""
        obs = sorted((max(1, tokens), cut) for tokens, cut in samples)
        self.n = len(obs)
        if self.n == 0:
            raise ValueError("a length fit needs at least one sample")
        logs = [math.log(t) for t, _ in obs]
        self.mu = sum(logs) / self.n
        var = sum((x - self.mu) ** 2 for x in logs) / max(1, self.n - 1)
        self.sigma = max(_SIGMA_FLOOR, math.sqrt(var))
        self.mean = sum(t for t, _ in obs) / self.n
        # Kaplan-Meier: after each distinct length t, the estimated P(length > t).
        times: list[int] = []
        surv: list[float] = []
        s, at_risk, i = 1.0, self.n, 0
        while i < self.n:
            t = obs[i][0]
            ended = left = 0
            while i < self.n and obs[i][0] == t:
                ended += not obs[i][1]
                left += 1
                i += 1
            if ended:
                s *= 1.0 - ended / at_risk
            times.append(t)
            surv.append(s)
            at_risk -= left
        self._km_times = times
        self._km_surv = surv
        # Caps up to here have _TAIL_SAMPLES replies at least as long: enough to judge them by
        # the replies alone. Past it the log-normal guards the few replies seen.
        self._edge = obs[self.n - _TAIL_SAMPLES][0] if self.n > _TAIL_SAMPLES else 0

    def empirical(self, cap: int) -> float:
        """Kaplan-Meier estimate of P(length >= cap): the share of replies cut at ``cap``."""
        i = bisect.bisect_right(self._km_times, cap - 1)
        return 1.0 if i == 0 else self._km_surv[i - 1]

    def parametric(self, cap: int, shift_sd: float = 0.0) -> float:
        """P(length >= cap) under the fitted log-normal, widened for the sample size (a
        prediction for the next reply, not the mean of the past ones) and for ``shift_sd``,
        the uncertainty (in log space) of where the distribution sits."""
        n = self.n
        # The spread is widened by the uncertainty of the new reply (1/n) and of sigma itself
        # (its one-sided 95% bound: a window of few samples often looks narrower than it is).
        spread = self.sigma * math.sqrt(1.0 + 1.0 / n) * (1.0 + 1.64 / math.sqrt(2.0 * n))
        spread = math.hypot(spread, shift_sd)
        z = (math.log(max(cap, 1)) - self.mu) / spread
        return 0.5 * math.erfc(z / math.sqrt(2.0))

    def upper(self, cap: int) -> float:
        """The Kaplan-Meier share at ``cap`` plus one standard error."""
        km = self.empirical(cap)
        return min(1.0, km + math.sqrt(km * (1.0 - km) / self.n))

    def redone(self, cap: int, shift_sd: float = 0.0) -> float:
        """The share of replies a cap of ``cap`` would cut: where at least ``_TAIL_SAMPLES``
        replies were that long, their share plus one standard error (at a cap lowered for
        ``shift_sd``); past that, the larger of their share and the log-normal's tail, which
        never judges a cap riskier than the last one the replies judged alone. A real
        model's tail may be lighter than a log-normal's (the simulator's instructions: 0.3%
        of replies past 100 tokens where the fit says 1.3%) or heavier: the replies decide
        where they can."""
        # Where the replies sit is uncertain by shift_sd: near the 1% tail that moves a quantile
        # about as much as widening the log-normal by it does.
        lowered = 2.33 * (math.hypot(self.sigma, shift_sd) - self.sigma)
        at = max(1, math.floor(cap * math.exp(-lowered)))
        if at <= self._edge:
            return self.upper(at)
        guard = self.parametric(cap, shift_sd)
        if self._edge:
            guard = min(guard, self.upper(self._edge))
        return max(self.empirical(at), guard)


def choose_cap(
    fit: LengthFit,
    *,
    prompt: int,
    full: int,
    rule: CapRule,
    redo: int | None = None,
    shift_sd: float = 0.0,
) -> CapChoice:
    """The cap up to ``full`` with the lowest expected charge whose cut share and extra money
    stay within ``rule``; ``full`` itself when no lower cap does (it is never cut by choice).
    ``redo``: the cap a cut reply is asked again with (``full`` when None); ``shift_sd``: how
    uncertain the fit's location is for these replies (log space; see ``LengthFit.parametric``)."""
    redo = full if redo is None else redo
    ratio = rule.output_price_ratio
    base_money = prompt + ratio * min(fit.mean, full)
    best = CapChoice(full, 0.0, float(prompt + full), base_money)
    caps = _candidates(fit, full)
    # The cut share falls as the cap grows (both estimates are survival functions), so the caps
    # that cut too many are a prefix: skip it by bisection.
    lo, hi = 0, len(caps)
    while lo < hi:
        mid = (lo + hi) // 2
        if fit.redone(caps[mid], shift_sd) > rule.max_redone_share:
            lo = mid + 1
        else:
            hi = mid
    for m in caps[lo:]:
        if prompt + m >= best.charge:
            break  # a cap's charge is at least prompt + cap: no larger cap can do better
        p_cut = fit.redone(m, shift_sd)
        extra_money = p_cut * (prompt + ratio * m)
        if extra_money > rule.max_extra_money_share * base_money:
            continue
        charge = prompt + m + p_cut * (prompt + redo)
        if charge < best.charge:
            best = CapChoice(m, p_cut, charge, base_money + extra_money)
    return best


def _candidates(fit: LengthFit, full: int) -> list[int]:
    """The caps ``choose_cap`` tries, ascending: ``_CANDIDATES`` geometric steps from the
    fit's median length up to (not including) ``full``, rounded up, each once."""
    low = max(1, min(full, math.floor(math.exp(fit.mu))))
    if low >= full:
        return []
    step = (full / low) ** (1.0 / _CANDIDATES)
    caps: list[int] = []
    cap = float(low)
    while cap < full:
        m = math.ceil(cap)
        cap *= step
        if m < full and (not caps or m > caps[-1]):
            caps.append(m)
    return caps


class LengthLearner:
    """Completion lengths per (step kind, group) and the caps chosen from them (cached)."""

    __slots__ = (
        "_choices",
        "_fits",
        "_logs",
        "_new",
        "_own_after",
        "_pool_groups",
        "_rule",
        "_samples",
        "_sources",
        "_sums",
        "_window",
    )

    def __init__(self, rule: CapRule | None = None, *, window: int = 2000) -> None:
        self._rule = rule or CapRule()
        if window < self._rule.min_samples:
            raise ValueError(f"window = {window}: expected at least min_samples")
        self._window = window
        self._own_after = min(window, _OWN_FIT * self._rule.min_samples)
        self._samples: dict[tuple[str, str], deque[tuple[int, bool]]] = {}
        # Per group: log lengths in English tokens of its uncut replies, and their sum.
        self._logs: dict[tuple[str, str], deque[float]] = {}
        self._sums: dict[tuple[str, str], float] = {}
        # Per step kind: the group of each reply in its pool (beside the pool's window).
        self._pool_groups: dict[str, deque[str]] = {}
        self._new: dict[tuple[str, str], int] = {}
        self._fits: dict[tuple[str, str], LengthFit | None] = {}
        # (kind, the group whose fit chose it, the group it is for, prompt bucket, full cap,
        # scale bucket) -> the cap and why
        self._choices: dict[tuple[str, str, str, int, int, int], tuple[int, CapSource]] = {}
        self._sources: Counter[tuple[str, CapSource]] = Counter()

    @property
    def rule(self) -> CapRule:
        return self._rule

    def observe(
        self, kind: str, group: str, completion_tokens: int, cap: int, *, factor: float = 1.0
    ) -> None:
        """One reply of step ``kind`` in ``group``: ``completion_tokens`` under a cap of ``cap``
        (a reply that reached its cap was cut, so its length is a lower bound); ``factor``: the
        group's tokens per English token, for the step kind's pool."""
        cut = completion_tokens >= cap
        self._add((kind, group), completion_tokens, cut)
        self._add((kind, _POOLED), max(1, round(completion_tokens / factor)), cut)
        groups = self._pool_groups.get(kind)
        if groups is None:
            groups = self._pool_groups[kind] = deque(maxlen=self._window)
        groups.append(group)
        if not cut:
            # Only whole replies place the group: a cut one's length is not its own.
            key = (kind, group)
            logs = self._logs.get(key)
            if logs is None:
                logs = self._logs[key] = deque()
            value = math.log(max(1, completion_tokens) / factor)
            logs.append(value)
            total = self._sums.get(key, 0.0) + value
            if len(logs) > self._window:
                total -= logs.popleft()
            self._sums[key] = total

    def _add(self, key: tuple[str, str], tokens: int, cut: bool) -> None:
        window = self._samples.get(key)
        if window is None:
            window = self._samples[key] = deque(maxlen=self._window)
        window.append((tokens, cut))
        self._new[key] = self._new.get(key, 0) + 1

    def samples(self, kind: str, group: str) -> int:
        window = self._samples.get((kind, group))
        return len(window) if window is not None else 0

    def warmup(self, kind: str, probing: int) -> Warmup:
        """Whether a first try of step ``kind`` may go out while ``probing`` of them are out
        with the configured cap for want of samples: LEARNED once the kind's pool holds
        ``min_samples`` replies, PROBE while the replies out would not bring it there, WAIT
        otherwise (a probe that fails without a reply lets another one go)."""
        have = self.samples(kind, _POOLED)
        need = self._rule.min_samples
        if have >= need:
            return Warmup.LEARNED
        return Warmup.PROBE if have + probing < need else Warmup.WAIT

    def sources(self) -> dict[str, dict[str, int]]:
        """How many caps went out per step kind and source (``CapSource`` values)."""
        out: dict[str, dict[str, int]] = {}
        for (kind, source), n in sorted(
            self._sources.items(), key=lambda x: (x[0][0], x[0][1].value)
        ):
            out.setdefault(kind, {})[source.value] = n
        return out

    def _shift(self, kind: str, group: str, pool: LengthFit) -> tuple[float, float]:
        """Where the group's replies sit against the pool's (log space, in English tokens):
        the mean of its whole replies less the pool's, shrunk towards 0 (the known factor),
        and the uncertainty of that."""
        key = (kind, group)
        n = len(self._logs.get(key, ()))
        shift = (self._sums.get(key, 0.0) - n * pool.mu) / (n + _PRIOR_REPLIES)
        shift = max(-_MAX_SHIFT, min(_MAX_SHIFT, shift))
        return shift, pool.sigma / math.sqrt(n + _PRIOR_REPLIES)

    def _placed(
        self, kind: str, window: Iterable[tuple[int, bool]], pool: LengthFit
    ) -> list[tuple[int, bool]]:
        """The pool's replies, each moved by its group's shift against the ``pool`` fit so
        far: a language whose known factor is off does not widen the pool's shape."""
        groups = self._pool_groups[kind]
        shifts = {g: math.exp(-self._shift(kind, g, pool)[0]) for g in set(groups)}
        return [
            (max(1, round(tokens * shifts[g])), cut)
            for (tokens, cut), g in zip(window, groups, strict=True)
        ]

    def fit(self, kind: str, group: str) -> LengthFit | None:
        """The group's current fit; None until it has ``min_samples`` replies."""
        key = (kind, group)
        window = self._samples.get(key)
        if window is None or len(window) < self._rule.min_samples:
            return None
        fit = self._fits.get(key)
        if fit is None or self._new.get(key, 0) >= max(1, _REFIT_SHARE * len(window)):
            samples: Iterable[tuple[int, bool]] = window
            if group == _POOLED and fit is not None:
                samples = self._placed(kind, window, fit)
            fit = self._fits[key] = LengthFit(samples)
            self._new[key] = 0
            # Choices made on the old fit are stale.
            for stale in [c for c in self._choices if c[:2] == key]:
                del self._choices[stale]
        return fit

    def cap(
        self,
        kind: str,
        group: str,
        *,
        prompt: int,
        full: int,
        redo: int | None = None,
        factor: float = 1.0,
    ) -> int:
        """The cap to send for a reply of step ``kind`` in ``group`` (whose language takes
        ``factor`` times English's tokens): the cheapest ``choose_cap`` allows on the group's
        own replies, else on the step kind's pool scaled by ``factor``, else ``full``; never
        above ``full``. A cut reply is asked again with ``redo`` (``full`` when None)."""
        source, scale, shift_sd, shift_bucket = group, 1.0, 0.0, 0
        fit = self.fit(kind, group) if self.samples(kind, group) >= self._own_after else None
        if fit is None:
            fit = self.fit(kind, _POOLED)
            if fit is None:
                self._sources[kind, CapSource.CONFIGURED] += 1
                return full
            source = _POOLED
            shift, shift_sd = self._shift(kind, group, fit)
            shift_bucket = round(shift / _SHIFT_BUCKET)
            scale = max(factor, 1e-6) * math.exp(shift_bucket * _SHIFT_BUCKET)
        bucket = round(math.log(max(prompt, 1)) / math.log(_PROMPT_BUCKET))
        key = (kind, source, group, bucket, full, shift_bucket)
        found = self._choices.get(key)
        if found is None:
            redo = full if redo is None else redo
            # The pool counts English tokens: its choice is made in them and scaled back.
            chosen = choose_cap(
                fit,
                prompt=max(1, round(prompt / scale)),
                full=max(1, math.floor(full / scale)),
                rule=self._rule,
                redo=max(1, round(redo / scale)),
                shift_sd=shift_sd,
            ).cap
            cap = min(full, math.ceil(chosen * scale))
            why = CapSource.POOLED if source == _POOLED else CapSource.OWN
            found = self._choices[key] = (cap, CapSource.FULL if cap >= full else why)
        self._sources[kind, found[1]] += 1
        return found[0]
