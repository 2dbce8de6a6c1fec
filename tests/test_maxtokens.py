"""Adaptive max_tokens: the tail estimate, the cap chosen from it, and the learner's window."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from engine.maxtokens import CapRule, LengthFit, LengthLearner, Warmup, choose_cap


def lognormal(rng: random.Random, median: float, sigma: float, n: int) -> list[tuple[int, bool]]:
    return [(max(1, round(math.exp(rng.gauss(math.log(median), sigma)))), False) for _ in range(n)]


def true_cut(cap: int, median: float, sigma: float) -> float:
    return 0.5 * math.erfc((math.log(cap) - math.log(median)) / sigma / math.sqrt(2))


def test_kaplan_meier_counts_cut_replies_as_lower_bounds() -> None:
    """Uncensored lengths give the plain empirical tail; a cut reply still counts as "longer"
    up to where it was cut, and beyond it the tail is unknown, so it never drops to zero."""
    fit = LengthFit([(10, False), (20, False), (30, False), (40, False)])
    assert fit.empirical(10) == 1.0
    assert fit.empirical(11) == pytest.approx(0.75)
    assert fit.empirical(40) == pytest.approx(0.25)
    assert fit.empirical(41) == 0.0
    cut = LengthFit([(10, False), (20, False), (25, True), (30, True)])
    assert cut.empirical(21) == pytest.approx(0.5)
    assert cut.empirical(1000) == pytest.approx(0.5)  # two of four are longer than we know


@pytest.mark.parametrize(("median", "sigma", "full", "prompt", "n"), [
    (250, 0.5, 2048, 500, 400), (40, 0.3, 512, 200, 50), (30, 0.4, 256, 900, 50),
])  # fmt: skip
def test_chosen_caps_cut_about_the_target_share_and_charge_less(
    median: float, sigma: float, full: int, prompt: int, n: int
) -> None:
    """Over many windows of n samples, the caps chosen cut no more than the target share of
    the next replies on average, and charge far less than the configured cap."""
    rng = random.Random(7)
    rule = CapRule(max_redone_share=0.01)
    cut = charged = 0.0
    trials = 200
    for _ in range(trials):
        choice = choose_cap(
            LengthFit(lognormal(rng, median, sigma, n)), prompt=prompt, full=full, rule=rule
        )
        assert 1 <= choice.cap <= full and choice.redone <= 0.01
        cut += true_cut(choice.cap, median, sigma)
        charged += prompt + choice.cap + true_cut(choice.cap, median, sigma) * (prompt + full)
    assert cut / trials <= 0.01
    # The charge beyond the prompt, redone replies included: well under the configured cap.
    assert charged / trials - prompt < 0.6 * full


def every_cap_tried(
    fit: LengthFit, *, prompt: int, full: int, rule: CapRule, redo: int, shift_sd: float
) -> tuple[int, float]:
    """choose_cap by brute force: every candidate judged, none skipped (the reference)."""
    ratio = rule.output_price_ratio
    base_money = prompt + ratio * min(fit.mean, full)
    best = (full, float(prompt + full))
    low = max(1, min(full, math.floor(math.exp(fit.mu))))
    if low >= full:
        return best
    step = (full / low) ** (1.0 / 96)
    cap = float(low)
    while cap < full:
        m = math.ceil(cap)
        cap *= step
        if m >= full:
            continue
        p_cut = fit.redone(m, shift_sd)
        if p_cut > rule.max_redone_share:
            continue
        if p_cut * (prompt + ratio * m) > rule.max_extra_money_share * base_money:
            continue
        charge = prompt + m + p_cut * (prompt + redo)
        if charge < best[1]:
            best = (m, charge)
    return best


def test_the_cap_search_skips_only_caps_that_cannot_win() -> None:
    """choose_cap skips the caps that cut too many (by bisection) and stops once a cap alone
    costs more than the best charge; it picks what trying every cap picks, for any fit."""
    rng = random.Random(11)
    for _ in range(300):
        median, sigma = rng.uniform(5, 600), rng.uniform(0.05, 1.5)
        samples = lognormal(rng, median, sigma, rng.randint(2, 300))
        samples += [(rng.randint(1, 900), True) for _ in range(rng.randint(0, 10))]
        fit = LengthFit(samples)
        full, prompt = rng.choice([64, 256, 1024, 4096]), rng.randint(1, 20_000)
        redo = rng.choice([full, 2 * full, full // 2 + 1])
        rule = CapRule(
            max_redone_share=rng.choice([0.001, 0.01, 0.1]),
            max_extra_money_share=rng.choice([0.001, 0.02, 0.5]),
        )
        shift_sd = rng.choice([0.0, 0.1, 0.5])
        choice = choose_cap(fit, prompt=prompt, full=full, rule=rule, redo=redo, shift_sd=shift_sd)
        cap, charge = every_cap_tried(
            fit, prompt=prompt, full=full, rule=rule, redo=redo, shift_sd=shift_sd
        )
        assert (choice.cap, choice.charge) == (cap, pytest.approx(charge, rel=1e-12))


def test_a_longer_prompt_buys_more_room_and_a_tight_money_rule_too() -> None:
    """Redoing a long prompt costs more, so the cap rises with the prompt; a smaller money
    share or redo share never lowers the cap."""
    fit = LengthFit(lognormal(random.Random(3), 200, 0.5, 2000))
    rule = CapRule()
    short = choose_cap(fit, prompt=100, full=4096, rule=rule)
    long = choose_cap(fit, prompt=50_000, full=4096, rule=rule)
    assert long.cap > short.cap and long.redone < short.redone
    strict = choose_cap(fit, prompt=100, full=4096, rule=CapRule(max_redone_share=0.001))
    assert strict.cap > short.cap
    frugal = choose_cap(fit, prompt=100, full=4096, rule=CapRule(max_extra_money_share=0.001))
    assert frugal.cap >= short.cap and frugal.redone * (100 + 4 * frugal.cap) <= 0.001 * (
        100 + 4 * fit.mean
    )


def test_no_cheaper_cap_means_the_full_one() -> None:
    """Replies that fill the configured cap leave nothing to save: the full cap goes out."""
    fit = LengthFit([(256, True)] * 40 + [(200, False)] * 10)
    assert choose_cap(fit, prompt=50, full=256, rule=CapRule()).cap == 256


def test_learner_waits_for_samples_then_adapts_and_refits() -> None:
    """Configured caps until a step kind has min_samples; then a cap near the lengths seen,
    other languages scaled by their token cost until they have their own; a group whose
    replies grow gets a larger cap once the new ones are in."""
    learner = LengthLearner(CapRule(min_samples=30), window=200)
    rng = random.Random(5)
    for tokens, _ in lognormal(rng, 40, 0.3, 29):
        learner.observe("evolve", "eng", tokens, 512)
    assert learner.cap("evolve", "eng", prompt=200, full=512) == 512
    learner.observe("evolve", "eng", 40, 512)
    first = learner.cap("evolve", "eng", prompt=200, full=512)
    assert 60 <= first <= 160
    # Another group borrows the step kind's pool, in its own tokens (five times English's).
    borrowed = learner.cap("evolve", "amh", prompt=1000, full=2560, factor=5.0)
    assert borrowed == pytest.approx(5 * first, abs=6)
    assert learner.cap("answer", "eng", prompt=200, full=512) == 512  # another step kind
    for tokens, _ in lognormal(rng, 120, 0.3, 200):
        learner.observe("evolve", "eng", tokens, first)
    assert learner.cap("evolve", "eng", prompt=200, full=512) > first
    assert learner.samples("evolve", "eng") == 200  # the window keeps the latest


def test_rule_and_window_are_checked() -> None:
    """Out-of-range rules are refused with the name of the setting."""
    with pytest.raises(ValueError, match="max_redone_share"):
        CapRule(max_redone_share=0.0)
    with pytest.raises(ValueError, match="min_samples"):
        CapRule(min_samples=1)
    with pytest.raises(ValueError, match="window"):
        LengthLearner(CapRule(min_samples=50), window=10)


def test_warmup_sends_only_the_probes_the_pool_still_needs() -> None:
    """Until a step kind's pool has min_samples replies, first tries go out as probes only
    while the replies out would not fill it; a probe that fails without a reply lets another
    go; once filled, every first try gets a learned cap, and the caps are counted by source."""
    learner = LengthLearner(CapRule(min_samples=10), window=100)
    assert learner.warmup("evolve", probing=0) is Warmup.PROBE
    assert learner.warmup("evolve", probing=9) is Warmup.PROBE
    assert learner.warmup("evolve", probing=10) is Warmup.WAIT
    assert learner.cap("evolve", "eng", prompt=200, full=512) == 512
    for _ in range(4):
        learner.observe("evolve", "eng", 40, 512)
    assert learner.warmup("evolve", probing=6) is Warmup.WAIT
    assert learner.warmup("evolve", probing=5) is Warmup.PROBE  # one probe failed
    assert learner.warmup("answer", probing=0) is Warmup.PROBE  # each step kind learns apart
    for tokens in (35, 38, 41, 44, 47, 50):
        learner.observe("evolve", "fra", tokens, 600, factor=1.2)
    assert learner.warmup("evolve", probing=0) is Warmup.LEARNED
    assert learner.warmup("evolve", probing=500) is Warmup.LEARNED
    assert learner.cap("evolve", "fra", prompt=200, full=600, factor=1.2) < 600
    assert learner.cap("evolve", "hin", prompt=200, full=700, factor=1.4) < 700
    assert learner.cap("evolve", "fra", prompt=200, full=40, factor=1.2) == 40  # nothing lower
    assert learner.sources() == {"evolve": {"configured": 1, "full": 1, "pooled": 2}}


def test_a_group_learns_its_own_scale_from_a_few_dozen_replies() -> None:
    """The pool (English here) sets the shape; a language whose known token-cost factor is
    off moves its caps towards what its own replies show after a few dozen of them, in both
    directions, and its caps still cut about the target share of its real replies."""
    rng = random.Random(11)
    learner = LengthLearner(CapRule(min_samples=50), window=2000)
    for tokens, _ in lognormal(rng, 200, 0.5, 400):
        learner.observe("answer", "eng", tokens, 4096)
    english = learner.cap("answer", "eng", prompt=300, full=4096)
    # Hindi is said to take 1.4x English's tokens but takes the same; Swahili is said to take
    # as many but takes 1.5x.
    said = {"hin": 1.4, "swh": 1.0}
    true = {"hin": 1.0, "swh": 1.5}
    before = {g: learner.cap("answer", g, prompt=300, full=4096, factor=said[g]) for g in said}
    assert before["hin"] > 1.35 * english and before["swh"] < 1.1 * english
    for group in said:
        for tokens, _ in lognormal(rng, 200 * true[group], 0.5, 40):
            learner.observe("answer", group, tokens, 4096, factor=said[group])
    after = {g: learner.cap("answer", g, prompt=300, full=4096, factor=said[g]) for g in said}
    assert after["hin"] < 1.2 * english < before["hin"]
    assert after["swh"] > 1.2 * english > 1.1 * before["swh"]
    for group in said:
        assert true_cut(after[group], 200 * true[group], 0.5) <= 0.015
    # 400 replies of its own are not yet enough for English's own fit (10 x min_samples).
    assert learner.sources() == {"answer": {"pooled": 5}}
    for tokens, _ in lognormal(rng, 200, 0.5, 100):
        learner.observe("answer", "eng", tokens, 4096)
    learner.cap("answer", "eng", prompt=300, full=4096)
    assert learner.sources() == {"answer": {"own": 1, "pooled": 5}}


def test_many_replies_judge_the_tail_themselves_and_few_leave_it_to_the_log_normal() -> None:
    """Replies with a lighter tail than a log-normal's (none past 90 tokens, 1% past 60): with
    2000 of them the cap follows what they show and still cuts at most the target share;
    with 60 the fitted log-normal keeps it higher. A cap is never judged riskier than a
    lower one."""

    def light(rng: random.Random, n: int) -> list[tuple[int, bool]]:
        return [
            (rng.randint(61, 90) if rng.random() < 0.01 else rng.randint(10, 60), False)
            for _ in range(n)
        ]

    def cut_share(cap: int) -> float:  # P(length >= cap) of the distribution above
        return 0.99 * max(0, 61 - cap) / 51 + 0.01 * min(30, max(0, 91 - cap)) / 30

    rng = random.Random(13)
    rule = CapRule()
    many = LengthFit(light(rng, 2000))
    assert many.parametric(90) > 0.01  # the log-normal alone would want more than 90
    chosen = choose_cap(many, prompt=300, full=512, rule=rule, redo=1024)
    assert chosen.cap <= 90 and cut_share(chosen.cap) <= 0.01
    few = choose_cap(LengthFit(light(rng, 60)), prompt=300, full=512, rule=rule, redo=1024)
    assert few.cap > chosen.cap
    for fit in (many, LengthFit(light(rng, 60)), LengthFit(lognormal(rng, 40, 0.5, 300))):
        shares = [fit.redone(cap, 0.1) for cap in range(1, 400)]
        assert all(a >= b for a, b in itertools.pairwise(shares))
