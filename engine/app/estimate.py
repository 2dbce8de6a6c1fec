"""``m2l estimate CONFIG [--pilot N] [--json]``: what a run will cost before it spends anything.

The handler returns an exit code; ConfigError and StateError propagate to the CLI's error
handling (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

from budgets.admission import run_price
from budgets.estimate import Estimate, estimate_run
from budgets.prices import from_nano
from budgets.stepload import KINDS
from engine.app.modelcheck import check_model
from engine.app.pilot import run_pilot
from engine.app.run import endpoint_of
from engine.batch.planner import expected_waves
from engine.config import Config, environment, load_config
from engine.formats import duration, usd
from engine.simulator.sampling import sim_outputs
from state.selection import SelectionReport, shortfall_summary

__all__ = [
    "add_estimate_parser",
    "estimate_json",
    "estimate_lines",
    "project_run",
    "run_estimate",
]


def add_estimate_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``estimate`` to a CLI; it sets ``func`` to its handler."""
    p = subparsers.add_parser(
        "estimate",
        help="project a run's requests, tokens, cost and wall time before it starts",
        description=(
            "Plan the run CONFIG describes (in memory: nothing is written) and project its "
            "requests, tokens, cost and wall time at the configured limits. Reply lengths are "
            "an assumption, shown with the result; --pilot N runs N real conversations (the "
            "simulator when no API key is set) and projects the cost from them with a 95% "
            "interval. A pilot against a real provider spends real money."
        ),
    )
    p.add_argument("config", type=Path, help="the run's TOML config")
    p.add_argument(
        "--pilot",
        type=int,
        default=0,
        metavar="N",
        help="also run N conversations into a temporary directory and extrapolate",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_estimate)


def run_estimate(args: argparse.Namespace) -> int:
    """Print the estimate (and the pilot's projection); returns an exit code."""
    config = load_config(args.config)
    env = environment()
    warnings = check_model(config, env)  # an unpriced model with money at stake: exit 2
    simulated = config.uses_simulator(env)
    run_price(config)  # a capped run without a price cannot run: an error, not a note
    estimate = project_run(config, simulated=simulated)
    provider, _ = endpoint_of(config, env)
    pilot = None
    if args.pilot:
        if not args.json:
            where = "the simulator" if simulated else f"{config.provider.base_url} (real money)"
            print(f"running a pilot of {args.pilot} conversations against {where} ...")
            sys.stdout.flush()
        pilot = asyncio.run(
            run_pilot(config, args.pilot, env=env, population=estimate.conversations)
        )
    if args.json:
        data: dict[str, Any] = estimate_json(estimate)
        data.update(provider=provider, model=config.provider.model, simulated=simulated)
        data["pilot"] = pilot.to_json() if pilot is not None else None
        data["warnings"] = warnings
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    money = " (money is simulated: nothing is paid)" if simulated else " (real money)"
    print(f"provider: {config.provider.model} on {provider}{money}")
    for line in estimate_lines(estimate):
        print(line)
    for warning in warnings:
        print(f"warning: {warning}")
    if pilot is not None:
        for line in pilot.lines(estimate.outputs):
            print(line)
    return 0


def project_run(config: Config, *, simulated: bool) -> Estimate:
    """The run's estimate, with reply lengths sampled from the simulator when the run goes to it.

    Raises ConfigError for the config or the seeds.
    """
    reply_lengths = partial(sim_outputs, config.sim) if simulated else None
    return estimate_run(config, simulated=simulated, reply_lengths=reply_lengths)


def estimate_lines(e: Estimate) -> list[str]:
    """The estimate as short human-readable lines."""
    turns = ", ".join(f"{t}: {n}" for t, n in sorted(e.turns.items()))
    out = [
        f"plan: {e.seeds} seeds → {e.conversations} conversations (turns {turns})",
        *(selection_lines(e.selection) if e.selection is not None else []),
        f"requests: {e.requests:,} (no regenerations or retries counted)",
        f"tokens: {e.prompt_tokens:,.0f} prompt + {e.completion_tokens:,.0f} completion"
        + (
            f" + {e.reasoning_tokens:,.0f} hidden reasoning (billed as output; "
            f"{e.reasoning_tokens / e.requests:,.0f} a reply assumed by effort)"
            if e.reasoning_tokens and e.requests
            else ""
        ),
    ]
    for kind in KINDS:
        k = e.by_kind.get(kind)
        if k is not None and k.requests:
            out.append(
                f"  {kind:<9} {k.requests:>8,} requests, {k.prompt_tokens / k.requests:>7,.0f} "
                f"prompt + {k.completion_tokens / k.requests:>5,.0f} completion tokens each"
            )
    out.append(f"replies: {e.outputs.basis}")
    if e.price is None:
        out.append(f"cost: unknown: model {e.model!r} has no price (see [budget.prices])")
    else:
        cost, worst = e.cost_usd or 0.0, e.worst_usd or 0.0
        if e.service_tier in ("flex", "priority"):
            out.append(
                f"cost: {usd(cost)} at {e.service_tier} prices (every reply at max_tokens: "
                f"{usd(worst)})"
            )
        else:
            out.append(
                f"cost: {usd(cost)} (every reply at max_tokens: {usd(worst)}; with the Batch "
                f"API: {usd(cost * (1 - e.batch_discount))})"
            )
        out.append(
            f'batch mode: {usd(cost * (1 - e.batch_discount))} with run.mode = "batch" '
            f"(online {usd(cost)}), in about {batch_waves(e)} waves of batches: one per step of "
            "the longest conversation, each as long as its batches take (up to 24 h)"
        )
        out.append(f"price: {e.price.describe()}")
        out.append(f"price table: built-in prices as of {e.prices_as_of}")
        if e.cap_usd is not None:
            out.append(_cap_line(e, cost))
    bounds = ", ".join(f"{k} {duration(v)}" for k, v in e.wall.bounds.items())
    out.append(
        f"wall time: about {duration(e.wall.seconds)} at the configured limits, bound by "
        f"{e.wall.bound} "
        f"({bounds}; latency: {e.latency.basis})"
    )
    out.extend(f"note: {n}" for n in e.notes)
    return out


def batch_waves(e: Estimate) -> int:
    """Rounds of batches a batch-mode run of this plan needs (no regenerations counted)."""
    return expected_waves([2 * turns for turns, n in e.turns.items() if n])


def selection_lines(selection: SelectionReport, *, every: bool = True) -> list[str]:
    """Seeds asked / available / taken per language, short languages first.

    With ``every`` false, the languages that got their share are summed up in one line.
    """
    takes = sorted(selection.languages, key=lambda t: (t.available >= t.asked, t.language))
    if not takes:
        return []
    out = [
        f"seeds: {selection.selected_seeds} taken of {selection.requested} asked; per language "
        "asked / available / taken:",
        *shortfall_summary(takes, selection.shortfall_mode),
    ]
    full = [t for t in takes if t.available >= t.asked]
    shown = takes if every else [t for t in takes if t.available < t.asked]
    out += [
        f"  {t.language} ({t.language_code}): {t.asked} / {t.available} / {t.taken}"
        + (" (short)" if t.available < t.asked else "")
        for t in shown
    ]
    if not every and full:
        taken = sorted(t.taken for t in full)
        asked = sorted(t.asked for t in full)
        spread = f"{taken[0]}" if taken[0] == taken[-1] else f"{taken[0]}–{taken[-1]}"
        ask = f"{asked[0]}" if asked[0] == asked[-1] else f"{asked[0]}–{asked[-1]}"
        out.append(f"  the other {len(full)} languages: asked {ask}, taken {spread} each")
    return out


def _cap_line(e: Estimate, cost: float) -> str:
    cap = e.cap_usd or 0.0
    if cost <= cap:
        return f"budget: fits the {usd(cap)} cap ({cost / cap:.0%} of it)" if cap else ""
    done = int(e.conversations * cap / cost) if cost else 0
    return (
        f"budget: over the {usd(cap)} cap; the run would stop at the cap with about "
        f"{done:,} of {e.conversations:,} conversations done"
    )


def estimate_json(e: Estimate) -> dict[str, Any]:
    """The estimate as the JSON ``m2l estimate --json`` prints."""
    return {
        "model": e.model,
        "price": None
        if e.price is None
        else {
            "entry": e.price.model,
            "input_usd_per_mtok": e.price.input_usd_per_mtok,
            "output_usd_per_mtok": e.price.output_usd_per_mtok,
            "cached_input_usd_per_mtok": e.price.cached_input_usd_per_mtok,
            "origin": e.price.origin,
        },
        "prices_as_of": e.prices_as_of,
        "seeds": e.seeds,
        "seeds_per_language": [
            {
                "language": t.language,
                "language_code": t.language_code,
                "asked": t.asked,
                "available": t.available,
                "taken": t.taken,
            }
            for t in (e.selection.languages if e.selection is not None else ())
        ],
        "conversations": e.conversations,
        "turns": {str(t): n for t, n in sorted(e.turns.items())},
        "requests": e.requests,
        "prompt_tokens": round(e.prompt_tokens),
        "completion_tokens": round(e.completion_tokens),
        "reasoning_tokens": round(e.reasoning_tokens),
        "by_kind": {
            kind: {
                "requests": k.requests,
                "prompt_tokens": round(k.prompt_tokens),
                "completion_tokens": round(k.completion_tokens),
                "reasoning_tokens": round(k.reasoning_tokens),
                "cost_usd": from_nano(k.cost_nano) if e.price else None,
            }
            for kind, k in e.by_kind.items()
        },
        "cost_usd": e.cost_usd,
        "worst_case_usd": e.worst_usd,
        "batch_cost_usd": None if e.cost_usd is None else e.cost_usd * (1 - e.batch_discount),
        "batch_waves": batch_waves(e),
        "cap_usd": e.cap_usd,
        "assumed_completion_tokens": {k: getattr(e.outputs, k) for k in KINDS},
        "assumption": e.outputs.basis,
        "wall_seconds": e.wall.seconds,
        "wall_bound": e.wall.bound,
        "wall_bounds": dict(e.wall.bounds),
        "latency": e.latency.basis,
        "notes": list(e.notes),
    }
