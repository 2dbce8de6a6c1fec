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
tail, so a few dozen samples cannot talk the cap down past what the next replies need. Until a
group has ``min_samples`` replies of its own, its caps come from every group of the step kind
pooled, each reply counted in English tokens (divided by its language's token-cost factor) and
the cap scaled back by the group's factor; until the pool has ``min_samples`` either, the
configured cap goes out. Pure: no clock, no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CapChoice", "CapRule", "LengthFit", "LengthLearner", "choose_cap"]

_SIGMA_FLOOR = 0.05  # a group of identical lengths still has some spread in log space
_CANDIDATES = 96  # caps tried between the smallest sensible one and the full cap
_REFIT_SHARE = 0.05  # a group's fit is redone once its window holds this share of new samples
_PROMPT_BUCKET = 1.1  # choices are cached per prompt length, in buckets of 10%
_POOLED = "*"  # the group of a step kind's replies from every group, in English tokens


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

    __slots__ = ("_km_surv", "_km_times", "mean", "mu", "n", "sigma")

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

    def empirical(self, cap: int) -> float:
        """Kaplan-Meier estimate of P(length >= cap): the share of replies cut at ``cap``."""
        i = bisect.bisect_right(self._km_times, cap - 1)
        return 1.0 if i == 0 else self._km_surv[i - 1]

    def parametric(self, cap: int) -> float:
        """P(length >= cap) under the fitted log-normal, widened for the sample size (a
        prediction for the next reply, not the mean of the past ones)."""
        n = self.n
        # The spread is widened by the uncertainty of the new reply (1/n) and of sigma itself
        # (its one-sided 95% bound: a window of few samples often looks narrower than it is).
        spread = self.sigma * math.sqrt(1.0 + 1.0 / n) * (1.0 + 1.64 / math.sqrt(2.0 * n))
        z = (math.log(max(cap, 1)) - self.mu) / spread
        return 0.5 * math.erfc(z / math.sqrt(2.0))

    def redone(self, cap: int) -> float:
        """The share of replies a cap of ``cap`` would cut: the larger of both estimates."""
        return max(self.empirical(cap), self.parametric(cap))


def choose_cap(
    fit: LengthFit, *, prompt: int, full: int, rule: CapRule, redo: int | None = None
) -> CapChoice:
    """The cap up to ``full`` with the lowest expected charge whose cut share and extra money
    stay within ``rule``; ``full`` itself when no lower cap does (it is never cut by choice).
    ``redo``: the cap a cut reply is asked again with (``full`` when None)."""
    redo = full if redo is None else redo
    ratio = rule.output_price_ratio
    base_money = prompt + ratio * min(fit.mean, full)
    best = CapChoice(full, 0.0, float(prompt + full), base_money)
    low = max(1, min(full, math.floor(math.exp(fit.mu))))
    if low >= full:
        return best
    step = (full / low) ** (1.0 / _CANDIDATES)
    cap = float(low)
    seen = set()
    while cap < full:
        m = math.ceil(cap)
        cap *= step
        if m in seen or m >= full:
            continue
        seen.add(m)
        p_cut = fit.redone(m)
        if p_cut > rule.max_redone_share:
            continue
        extra_money = p_cut * (prompt + ratio * m)
        if extra_money > rule.max_extra_money_share * base_money:
            continue
        charge = prompt + m + p_cut * (prompt + redo)
        if charge < best.charge:
            best = CapChoice(m, p_cut, charge, base_money + extra_money)
    return best


class LengthLearner:
    """Completion lengths per (step kind, group) and the caps chosen from them (cached)."""

    __slots__ = ("_choices", "_fits", "_new", "_rule", "_samples", "_window")

    def __init__(self, rule: CapRule | None = None, *, window: int = 2000) -> None:
        self._rule = rule or CapRule()
        if window < self._rule.min_samples:
            raise ValueError(f"window = {window}: expected at least min_samples")
        self._window = window
        self._samples: dict[tuple[str, str], deque[tuple[int, bool]]] = {}
        self._new: dict[tuple[str, str], int] = {}
        self._fits: dict[tuple[str, str], LengthFit | None] = {}
        # (kind, the group whose fit chose it, the group it is for, prompt bucket, full cap)
        self._choices: dict[tuple[str, str, str, int, int], int] = {}

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

    def _add(self, key: tuple[str, str], tokens: int, cut: bool) -> None:
        window = self._samples.get(key)
        if window is None:
            window = self._samples[key] = deque(maxlen=self._window)
        window.append((tokens, cut))
        self._new[key] = self._new.get(key, 0) + 1

    def samples(self, kind: str, group: str) -> int:
        window = self._samples.get((kind, group))
        return len(window) if window is not None else 0

    def fit(self, kind: str, group: str) -> LengthFit | None:
        """The group's current fit; None until it has ``min_samples`` replies."""
        key = (kind, group)
        window = self._samples.get(key)
        if window is None or len(window) < self._rule.min_samples:
            return None
        fit = self._fits.get(key)
        if fit is None or self._new.get(key, 0) >= max(1, _REFIT_SHARE * len(window)):
            fit = self._fits[key] = LengthFit(window)
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
        source, scale = group, 1.0
        fit = self.fit(kind, group)
        if fit is None:
            source, scale = _POOLED, max(factor, 1e-6)
            fit = self.fit(kind, _POOLED)
            if fit is None:
                return full
        bucket = round(math.log(max(prompt, 1)) / math.log(_PROMPT_BUCKET))
        key = (kind, source, group, bucket, full)
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
            ).cap
            found = self._choices[key] = min(full, math.ceil(chosen * scale))
        return found
