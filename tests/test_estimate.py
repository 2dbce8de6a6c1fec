"""`m2l estimate`: the token model against the real prompter, the projection against a real
simulated run, the pilot's interval, and the command's output."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import duckdb
import pytest

from budgets.admission import worst_step_costs
from budgets.estimate import PlannedConversation, assumed_outputs, estimate_plans
from budgets.interval import extrapolate, t95
from budgets.prices import from_nano, load_price_table
from budgets.stepload import ConversationShape, OutputLengths, TemplateSizes, step_loads
from engine.app.estimate import add_estimate_parser, estimate_lines, project_run
from engine.app.pilot import pilot_costs
from engine.app.run import execute_run
from engine.config import (
    Config,
    GenerationConfig,
    ProviderConfig,
    RunConfig,
    SeedsConfig,
    StepTokens,
    load_config,
)
from engine.conversation import (
    Conversation,
    Done,
    Outcome,
    Plan,
    StepKind,
    StepRules,
    Verdict,
    apply,
    next_request,
)
from engine.prompter import TaxonomyPrompter
from engine.scheduler import RunStatus
from engine.tokens import TokenCounter
from prompts.taxonomy import load_taxonomy
from tests.runfixtures import write_config

TAXONOMY = load_taxonomy()
COUNTER = TokenCounter("gpt-4o-mini")


class AcceptAll:
    def check(self, conv: Conversation, kind: StepKind, text: str) -> Verdict:
        return Verdict(True)

    def stamp(self, conv: Conversation, kind: StepKind, text: str) -> int | None:
        return None  # a fake gate vouches for nothing


def _text(tokens: int) -> str:
    # " word" is one token in o200k_base: a reply of exactly ``tokens`` tokens.
    return ("word" + " word" * (tokens - 1)) if tokens else ""


@pytest.mark.parametrize("language", ["English", "Hindi"])
def test_step_model_matches_the_prompts_the_prompter_builds(language: str) -> None:
    """For replies of known length, each step's projected prompt tokens are within 2% (and a
    few tokens) of what the real prompter sends, from turn 1 to turn 6."""
    followups = (
        "CLARIFICATION",
        "OPEN_ENDED_QUESTIONS",
        "CHALLENGING_FOLLOW_UP",
        "RANDOM_FOLLOW_UP",
        "REDIRECTION_FOLLOW_UP",
    )
    seed = "Explain why the sky looks blue at noon and red at sunset."
    plan = Plan(1, 1, seed, language, "hin", "open_qa", "DEEPEN", 6, followups)
    max_tokens = StepTokens(evolve=300, answer=600, follow_up=200)
    prompter = TaxonomyPrompter(TAXONOMY, COUNTER, max_tokens)
    lengths = {"evolve": 80, "answer": 250, "follow_up": 40}
    assert all(COUNTER.count(_text(n)) == n for n in lengths.values())
    sent = []
    conv = Conversation(plan)
    while not isinstance(nxt := next_request(conv, prompter, temperature=0.7), Done):
        request, rendered = nxt
        sent.append(request.prompt_tokens)
        kind = {0: "evolve"}.get(conv.next_step, "answer" if conv.next_step % 2 else "follow_up")
        outcome = Outcome(_text(lengths[kind]))
        conv = apply(
            conv, rendered, outcome, prompter=prompter, validator=AcceptAll(), rules=StepRules(0)
        )
    sizes = TemplateSizes(TAXONOMY, COUNTER)
    evolve, quotes = sizes.evolve("DEEPEN", language, "open_qa")
    shape = ConversationShape(
        turns=6,
        seed=quotes * COUNTER.count(seed),
        evolve_template=evolve,
        answer_system=sizes.answer_system(language, "open_qa"),
        follow_ups=tuple(sizes.follow_up(f, language, "open_qa") for f in followups),
    )
    outputs = OutputLengths(lengths["evolve"], lengths["answer"], lengths["follow_up"], "test")
    projected = [load.prompt for load in step_loads(shape, outputs, max_tokens)]
    assert len(sent) == len(projected) == 12
    for step, (real, model) in enumerate(zip(sent, projected, strict=True)):
        assert abs(real - model) <= 0.02 * real + 5, (step, real, model)


def test_interval_for_a_total_from_a_sample() -> None:
    """Three samples 1, 2, 3 project 10 draws at 20 ± t(2) × sqrt(100·1/3 + 10·1)."""
    result = extrapolate([1.0, 2.0, 3.0], 10)
    half = t95(2) * (100 / 3 + 10) ** 0.5
    assert result.total == pytest.approx(20.0)
    assert result.high == pytest.approx(20.0 + half)
    assert result.low == 0.0  # clipped: a cost is never negative
    with pytest.raises(ValueError, match="at least two"):
        extrapolate([1.0], 10)
    assert t95(1000) == 1.96


def test_estimate_counts_the_planned_conversations_and_their_steps(tmp_path: Path) -> None:
    """The estimate plans like `m2l run`: every conversation, 2 requests per turn, priced."""
    config = load_config(write_config(tmp_path, evols_per_seed=2))
    estimate = project_run(config, simulated=True)
    assert estimate.conversations == 16 and estimate.seeds == 8
    assert estimate.requests == sum(2 * t * n for t, n in estimate.turns.items())
    assert estimate.by_kind["evolve"].requests == 16
    cost, worst = estimate.cost_usd, estimate.worst_usd
    assert cost is not None and worst is not None and 0 < cost < worst
    text = "\n".join(estimate_lines(estimate))
    assert "simulator" in text and "gpt-4o-mini" in text
    assert not (tmp_path / "runs").exists(), "an estimate writes nothing"


async def _run_and_spend(config_path: Path) -> tuple[RunStatus, float]:
    config = load_config(config_path)
    report = await execute_run(config, env={})
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        per_conv, _, _ = pilot_costs(conn)
    return report.result.status, from_nano(sum(per_conv.values()))


@pytest.mark.anyio
async def test_projection_is_close_to_what_the_run_then_costs(tmp_path: Path) -> None:
    """The estimate of a simulated run is within 15% of its real cost (from the request log and
    the price table). The simulator's reply lengths are random per request: with ~100 requests
    their mean is known to about ±5% (1 sd), and validator regenerations add a little; 15% is
    about three times that noise, while a wrong token model (say, history not sent again each
    turn) is off by 40% or more."""
    path = write_config(tmp_path, evols_per_seed=2, faults="server_error = 0.02\nreset = 0.01")
    estimate = project_run(load_config(path), simulated=True)
    status, actual = await _run_and_spend(path)
    assert status is RunStatus.FINISHED
    assert estimate.cost_usd is not None
    assert estimate.cost_usd == pytest.approx(actual, rel=0.15)


def test_estimate_command_prints_json_with_a_pilot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`m2l estimate CONFIG --pilot 4 --json` prints the projection and the pilot's interval."""
    config = write_config(tmp_path, evols_per_seed=2)
    parser = argparse.ArgumentParser()
    add_estimate_parser(parser.add_subparsers())
    args = parser.parse_args(["estimate", str(config), "--pilot", "4", "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["conversations"] == 16 and data["cost_usd"] > 0
    assert "assumption" in data and data["wall_bound"] in ("rpm", "tpm", "latency")
    pilot = data["pilot"]
    assert pilot["conversations"] == 4 and pilot["population"] == 16
    assert pilot["projected_low_usd"] <= pilot["projected_usd"] <= pilot["projected_high_usd"]
    assert pilot["projected_usd"] == pytest.approx(data["cost_usd"], rel=0.5)
    assert not (tmp_path / "runs").exists(), "the pilot runs in a temporary directory"


def test_estimate_command_prints_its_assumptions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plain output states the reply-length assumption and the price it used."""
    config = write_config(tmp_path)
    parser = argparse.ArgumentParser()
    add_estimate_parser(parser.add_subparsers())
    args = parser.parse_args(["estimate", str(config)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "replies:" in out and "price: gpt-4o-mini" in out and "wall time:" in out


def _plain_config(**generation: object) -> Config:
    return Config(
        run=RunConfig("t"),
        seeds=SeedsConfig(file=Path("seeds.jsonl")),
        provider=ProviderConfig(model="gpt-4o-mini"),
        generation=GenerationConfig(**generation),  # type: ignore[arg-type]
    )


def test_projections_charge_the_max_tokens_the_prompter_sends_for_the_language() -> None:
    """The estimate and the budget's worst case charge each language the cap the prompter
    really sends (Amharic several times English's), not the configured value."""
    tokens = StepTokens(evolve=100, answer=400, follow_up=100)
    config = _plain_config(max_tokens=tokens)
    prompter = TaxonomyPrompter(TAXONOMY, COUNTER, tokens)
    sizes = TemplateSizes(TAXONOMY, COUNTER)
    prices = load_price_table()
    sent = {}
    for name, code in (("English", "eng"), ("Amharic", "amh")):
        planned = PlannedConversation(1, 1, name, "open_qa", "DEEPEN", ())
        estimate = estimate_plans(
            config, [planned], {1: 12}, sizes, price=None, prices=prices,
            outputs=assumed_outputs(tokens), simulated=False,
        )  # fmt: skip
        answer = estimate.by_kind["answer"]
        conv = Conversation(Plan(1, 1, "Explain tides.", name, code, "open_qa", "DEEPEN", 1, ()))
        sent[code] = prompter.max_tokens(conv, StepKind.ANSWER, 0)
        assert answer.charged_tokens - answer.prompt_tokens == pytest.approx(sent[code])
    assert sent["amh"] > 4 * sent["eng"]
    factor = prompter.language_factor("amh")
    worst = worst_step_costs(config, None, sizes, 12, {factor: 3, 1.0: 1})
    mean_answer = math.ceil((3 * sent["amh"] + sent["eng"]) / 4)
    plain = worst_step_costs(config, None, sizes, 12)
    # Step 1 is the first answer: its charge grows by the mean cap's excess over 400, and its
    # prompt by the evolve step's scaled reply (the history it repeats).
    assert worst[1].tokens - plain[1].tokens >= mean_answer - 400


def test_a_tpm_bound_estimate_says_adaptive_caps_will_charge_less(tmp_path: Path) -> None:
    """Bound by TPM, the estimate says its time charges the configured caps, which adaptive
    max_tokens lowers once replies are in; with adaptation off it does not say so."""
    limits = "[limits]\ntpm = 2000\n"
    for name in ("on", "off"):
        (tmp_path / name).mkdir()
    on = project_run(load_config(write_config(tmp_path / "on", extra=limits)), simulated=True)
    assert on.wall.bound == "tpm"
    assert any("adaptive max_tokens" in note for note in on.notes)
    off_config = write_config(
        tmp_path / "off", extra=limits + "[generation.adaptive_max_tokens]\nenabled = false\n"
    )
    off = project_run(load_config(off_config), simulated=True)
    assert not any("adaptive max_tokens" in note for note in off.notes)
