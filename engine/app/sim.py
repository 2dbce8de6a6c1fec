"""`m2l sim`: serve the simulator until Ctrl-C, for dry runs, demos and benchmarks.

The handler returns an exit code: 0 after Ctrl-C or SIGTERM, 2 when an option is wrong (a
ConfigError, printed to stderr with what to fix), including a non-loopback --host without
--allow-remote.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import sys

from engine.errors import ConfigError
from engine.simsettings import FAULT_KINDS, FaultRates, SimSettings
from engine.simulator.server import run_simulator

__all__ = ["add_sim_parser", "is_loopback", "run_sim", "settings_from_args"]

EXIT_CONFIG = 2
DEFAULT_PORT = 8765  # fixed, so a config's base_url keeps working across restarts


def add_sim_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `sim` to a CLI; it sets ``func`` to its handler."""
    d = SimSettings()
    p = subparsers.add_parser(
        "sim",
        help="run the embedded OpenAI-compatible simulator",
        description=(
            "Serve an OpenAI-compatible chat completions API with deterministic multilingual "
            "replies, OpenAI-style rate limits and injectable faults. Prints the base URL and "
            "runs until Ctrl-C. GET /stats shows counters; POST /stats/reset zeroes them."
        ),
    )
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host})")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than loopback (the simulator has no real security)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of replies and faults")
    p.add_argument("--model", default=d.model, help=f"main model name (default {d.model})")
    p.add_argument(
        "--also-model",
        action="append",
        default=[],
        metavar="NAME",
        help="another model name for GET /v1/models (repeatable)",
    )
    p.add_argument("--rpm", type=int, help="requests per minute (default: unlimited)")
    p.add_argument("--tpm", type=int, help="tokens per minute (default: unlimited)")
    p.add_argument(
        "--bucket-seconds",
        type=float,
        default=d.bucket_seconds,
        help="bucket size in seconds: 60 = a minute's burst, 1 = per-second enforcement",
    )
    p.add_argument("--ttft", type=float, default=d.ttft_s, help="time to first token, seconds")
    p.add_argument(
        "--per-token", type=float, default=d.per_token_s, help="seconds per output token"
    )
    p.add_argument("--jitter", type=float, default=d.jitter, help="latency jitter fraction")
    p.add_argument("--min-completion-tokens", type=int, default=d.min_completion_tokens)
    p.add_argument("--max-completion-tokens", type=int, default=d.max_completion_tokens)
    p.add_argument(
        "--reply-lengths",
        choices=("uniform", "realistic"),
        default=d.reply_lengths,
        help="uniform: budgets between the min and max completion tokens; realistic: a real "
        "model's lengths (long answers with a heavy tail, short instructions), per language",
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=d.default_max_tokens,
        help="tokens charged for a request without max_tokens",
    )
    p.add_argument("--context-window", type=int, default=d.context_window)
    p.add_argument("--hang-seconds", type=float, default=d.hang_s, help="length of a hang fault")
    p.add_argument(
        "--slots",
        type=int,
        help="serve like a self-hosted GPU server: this many requests decoded at once, the "
        "rest queued (default: unlimited parallelism)",
    )
    p.add_argument(
        "--batch-slowdown",
        type=float,
        default=d.batch_slowdown,
        help="with --slots: how many times longer a request takes when every slot is busy "
        f"(default {d.batch_slowdown:g})",
    )
    p.add_argument(
        "--queue-limit",
        type=int,
        help="with --slots: answer 503 when this many requests already wait (default: no bound)",
    )
    for kind in FAULT_KINDS:
        p.add_argument(
            f"--fault-{kind.replace('_', '-')}",
            type=float,
            default=0.0,
            metavar="RATE",
            help=f"probability of a {kind.replace('_', ' ')} fault per request",
        )
    p.add_argument(
        "--reasoning-model",
        action="append",
        metavar="GLOB",
        help="a model-name pattern served as a reasoning model (repeatable; default "
        + ", ".join(d.reasoning_models)
        + ")",
    )
    p.add_argument(
        "--flex-unavailable",
        type=float,
        default=d.flex_unavailable,
        metavar="RATE",
        help="share of flex requests refused with 429 resource unavailable",
    )
    p.add_argument(
        "--flex-slowdown",
        type=float,
        default=d.flex_slowdown,
        help=f"latency multiplier under flex processing (default {d.flex_slowdown:g})",
    )
    p.add_argument(
        "--cache-min-tokens",
        type=int,
        default=d.cache_min_tokens,
        help=f"shortest prompt prefix reported as cached (default {d.cache_min_tokens})",
    )
    p.add_argument(
        "--refuse-param",
        action="append",
        default=[],
        metavar="NAME",
        help="answer 400 unsupported_parameter to requests carrying NAME (repeatable)",
    )
    p.add_argument(
        "--batch-delay",
        type=float,
        default=d.batch_delay_s,
        metavar="SECONDS",
        help=f"Batch API: seconds from create to completed (default {d.batch_delay_s:g})",
    )
    p.add_argument(
        "--batch-expire",
        type=float,
        metavar="SECONDS",
        help="Batch API: a batch still running this long after its creation expires",
    )
    p.add_argument(
        "--batch-line-failure-rate",
        type=float,
        default=0.0,
        metavar="RATE",
        help="Batch API: share of lines answered 500 in the error file",
    )
    p.add_argument(
        "--unknown-models-404",
        action="store_true",
        help="answer 404 model_not_found for models not listed",
    )
    p.add_argument(
        "--require-api-key-env",
        metavar="VAR",
        help="require 'Authorization: Bearer <value of VAR>' (the key stays off the command line)",
    )
    p.set_defaults(func=run_sim)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_from_args(args: argparse.Namespace, env: dict[str, str]) -> SimSettings:
    """The parsed options as SimSettings; raises ConfigError for a wrong value."""
    if not is_loopback(args.host) and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host} is not a loopback address; the simulator serves anyone who can "
            "reach it, so pass --allow-remote if that is really meant"
        )
    key = None
    if args.require_api_key_env:
        key = env.get(args.require_api_key_env)
        if not key:
            raise ConfigError(
                f"--require-api-key-env names {args.require_api_key_env}, which is not set; "
                "export it or drop the option"
            )
    faults = FaultRates(**{k: getattr(args, f"fault_{k}") for k in FAULT_KINDS})
    return SimSettings(
        host=args.host,
        port=args.port,
        seed=args.seed,
        model=args.model,
        models=tuple(args.also_model),
        rpm=args.rpm,
        tpm=args.tpm,
        bucket_seconds=args.bucket_seconds,
        ttft_s=args.ttft,
        per_token_s=args.per_token,
        jitter=args.jitter,
        min_completion_tokens=args.min_completion_tokens,
        max_completion_tokens=args.max_completion_tokens,
        reply_lengths=args.reply_lengths,
        default_max_tokens=args.default_max_tokens,
        context_window=args.context_window,
        hang_s=args.hang_seconds,
        slots=args.slots,
        batch_slowdown=args.batch_slowdown,
        queue_limit=args.queue_limit,
        faults=faults,
        unknown_models_404=args.unknown_models_404,
        require_api_key=key,
        reasoning_models=tuple(args.reasoning_model or SimSettings().reasoning_models),
        flex_unavailable=args.flex_unavailable,
        flex_slowdown=args.flex_slowdown,
        cache_min_tokens=args.cache_min_tokens,
        refuse_params=tuple(args.refuse_param),
        batch_delay_s=args.batch_delay,
        batch_expire_s=args.batch_expire,
        batch_line_failure_rate=args.batch_line_failure_rate,
    )


async def _serve(settings: SimSettings) -> None:
    async with run_simulator(settings) as sim:
        limits = []
        if settings.rpm is not None:
            limits.append(f"{settings.rpm} RPM")
        if settings.tpm is not None:
            limits.append(f"{settings.tpm} TPM")
        print(
            f"m2l simulator serving {settings.model} at {sim.base_url} "
            f"({', '.join(limits) or 'no rate limits'}; seed {settings.seed}). Ctrl-C stops it.",
            flush=True,
        )
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            # SIGTERM (a service manager, `kill`) stops as cleanly as Ctrl-C does.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()  # until SIGTERM, or Ctrl-C cancels this task


def run_sim(args: argparse.Namespace) -> int:
    """Handle `m2l sim`; returns an exit code."""
    try:
        settings = settings_from_args(args, dict(os.environ))
        asyncio.run(_serve(settings))
    except ConfigError as exc:
        print(f"m2l sim: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        pass
    print("m2l simulator stopped.", file=sys.stderr)
    return 0
