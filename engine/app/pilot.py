"""``m2l estimate --pilot N``: run N real conversations into a temporary run directory and
project the full run's cost from what they cost."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from budgets.interval import Extrapolation, extrapolate
from budgets.ledger import spend_by_conversation
from budgets.prices import from_nano
from budgets.stepload import KINDS, OutputLengths
from engine.app.run import execute_run
from engine.config import Config
from engine.errors import ConfigError
from engine.events import Hooks
from engine.formats import duration, usd
from engine.records import step_kind
from state.requestlog import ModelFigures, completions_by_step, model_figures
from state.schema import STATE_FILE, open_read_only

__all__ = ["PilotResult", "pilot_config", "pilot_costs", "run_pilot"]


@dataclass(frozen=True, slots=True)
class PilotResult:
    """What N real conversations cost, and the run's total cost projected from them."""

    conversations: int
    status: str
    simulated: bool
    cost_per_conversation: Sequence[float]
    requests: int
    completion_by_kind: Mapping[str, float]
    projection: Extrapolation
    population: int
    wall_s: float
    reasoning: ModelFigures = field(default_factory=ModelFigures)  # in the completions too

    def lines(self, outputs: OutputLengths | None = None) -> list[str]:
        costs = self.cost_per_conversation
        mean = sum(costs) / len(costs) if costs else 0.0
        where = "the simulator" if self.simulated else "the configured provider"
        p = self.projection
        out = [
            f"pilot: {self.conversations} conversations against {where} ({self.status}, "
            f"{self.requests} requests, {duration(self.wall_s)}): {usd(mean)} per conversation",
            f"pilot projection for {self.population:,} conversations: {usd(p.total)} "
            f"(95% interval {usd(p.low)} .. {usd(p.high)})",
        ]
        measured = ", ".join(f"{k} {v:.0f}" for k, v in self.completion_by_kind.items())
        if measured:
            line = f"pilot completion tokens per reply: {measured}"
            if outputs is not None:
                line += (
                    " (assumed: " + ", ".join(f"{k} {getattr(outputs, k):.0f}" for k in KINDS) + ")"
                )
            out.append(line)
        r = self.reasoning
        if r.reasoning_tokens and self.requests:
            out.append(
                f"pilot hidden reasoning: {r.reasoning_tokens:,} tokens "
                f"({r.reasoning_tokens / self.requests:,.0f} a request, counted in the completion "
                f"tokens above), {usd(r.reasoning_usd)} of the pilot's cost"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "status": self.status,
            "simulated": self.simulated,
            "requests": self.requests,
            "cost_per_conversation_usd": list(self.cost_per_conversation),
            "completion_tokens_by_kind": dict(self.completion_by_kind),
            "projected_usd": self.projection.total,
            "projected_low_usd": self.projection.low,
            "projected_high_usd": self.projection.high,
            "population": self.population,
            "wall_seconds": self.wall_s,
            "reasoning_tokens": self.reasoning.reasoning_tokens,
            "reasoning_usd": self.reasoning.reasoning_usd,
        }


def pilot_config(config: Config, conversations: int, output_dir: Path) -> Config:
    """The config of a pilot: the same run, with only enough seeds for ``conversations``."""
    seeds = replace(
        config.seeds,
        total=max(1, math.ceil(conversations / config.seeds.evols_per_seed)),
        per_language=None,
    )
    run = replace(config.run, name=f"{config.run.name}-pilot", output_dir=output_dir)
    return replace(config, run=run, seeds=seeds)


def pilot_costs(conn: duckdb.DuckDBPyConnection) -> tuple[dict[int, int], dict[str, float], int]:
    """(nano per conversation, mean completion tokens per step kind, requests) of a run's log,
    as the ledger counts them (``budgets.ledger.spend_by_conversation``)."""
    per_conv: dict[int, int] = {
        int(c): 0 for (c,) in conn.execute("SELECT conv_id FROM conversations").fetchall()
    }
    spent = spend_by_conversation(conn)
    for conv_id, spend in spent.items():
        per_conv[conv_id] = spend.nano
    sums: dict[str, tuple[int, int]] = {}  # kind -> (replies, completion tokens)
    for step, (replies, tokens) in completions_by_step(conn).items():
        kind = step_kind(step).value
        n, total = sums.get(kind, (0, 0))
        sums[kind] = (n + replies, total + tokens)
    means = {k: sums[k][1] / sums[k][0] for k in KINDS if k in sums and sums[k][0]}
    return per_conv, means, sum(s.requests for s in spent.values())


async def run_pilot(
    config: Config,
    conversations: int,
    *,
    env: Mapping[str, str],
    population: int,
) -> PilotResult:
    """Run ``conversations`` real conversations into a temporary run directory, then project
    the full run's cost from them. Raises ConfigError, or what ``m2l run`` raises."""
    if conversations < 2:
        raise ConfigError("--pilot needs at least 2 conversations to give an interval")
    with tempfile.TemporaryDirectory(prefix="m2l-pilot-") as tmp:
        pilot = pilot_config(config, conversations, Path(tmp))
        started = time.monotonic()
        report = await execute_run(pilot, env=env, hooks=Hooks())
        wall = time.monotonic() - started
        with open_read_only(pilot.run_dir / STATE_FILE, action="read its costs") as conn:
            per_conv, completions, requests = pilot_costs(conn)
            reasoning = model_figures(conn)
    costs = [from_nano(n) for _, n in sorted(per_conv.items())]
    return PilotResult(
        conversations=len(costs),
        status=report.result.status.value,
        simulated=pilot.uses_simulator(env),
        cost_per_conversation=tuple(costs),
        requests=requests,
        completion_by_kind=completions,
        projection=extrapolate(costs, population),
        population=population,
        wall_s=wall,
        reasoning=reasoning,
    )
