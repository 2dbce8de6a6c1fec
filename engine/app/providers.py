"""The run's endpoints, opened: each configured endpoint's base URL and key (or an embedded
simulator of its own), its HTTP client and its request shape.

A config with one ``[provider]`` has one endpoint, named "provider"; ``[[providers]]`` entries
are one each. Whether an endpoint is the embedded simulator is decided per entry as for
``[provider]`` (``kind = "auto"`` and no key: the simulator), and a run refuses a mix of real
and simulated endpoints: their text would be from different models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from engine.client import ChatClient
from engine.config import Config, EndpointConfig, Secret
from engine.errors import ConfigError
from engine.modelprofile import ModelProfile
from engine.requestshape import RequestShape, ShapeSettings, hosted_by_openai
from engine.simulator import run_simulator

__all__ = ["SIMULATOR", "OpenEndpoint", "check_endpoints", "endpoint_host", "open_endpoints"]

SIMULATOR = "embedded simulator"


@dataclass(frozen=True, slots=True)
class OpenEndpoint:
    """One endpoint, ready to take requests."""

    entry: EndpointConfig
    base_url: str
    api_key: Secret | None
    simulated: bool
    client: ChatClient
    shape: RequestShape


def endpoint_host(entry: EndpointConfig, simulated: bool) -> str:
    """Where an endpoint's requests go, for people: its base_url's host, never user info."""
    if simulated:
        return SIMULATOR
    parts = urllib.parse.urlsplit(entry.base_url)
    return parts.netloc.rpartition("@")[2] or entry.base_url


def check_endpoints(config: Config, env: Mapping[str, str]) -> list[bool]:
    """Whether each endpoint is simulated; ConfigError (naming the file and the entry's key)
    for a real endpoint whose key variable is not set, or a mix of real and simulated ones."""
    entries = config.endpoints()
    simulated = [config.endpoint_simulated(e, env) for e in entries]
    for entry in entries:
        config.endpoint_key(entry, env)  # kind = "openai" without its key
    if any(simulated) and not all(simulated):
        real = entries[simulated.index(False)]
        fake_at = simulated.index(True)
        fake = entries[fake_at]
        where = f"{config.source}: " if config.source is not None else ""
        raise ConfigError(
            f"{where}{config.where(fake)}.api_key_env: the environment variable "
            f"{fake.api_key_env} is not set, so endpoint {fake.name!r} would be the embedded "
            f"simulator while {config.where(real)} ({real.name!r}) is a real endpoint, and one "
            f"run cannot mix their text. Export {fake.api_key_env}, or remove the entry"
        )
    return simulated


@contextlib.asynccontextmanager
async def open_endpoints(
    config: Config,
    env: Mapping[str, str],
    profile: ModelProfile,
    *,
    adapted: Mapping[str, str],
    shared: Sequence[str | None] | None = None,
) -> AsyncIterator[Sequence[OpenEndpoint]]:
    """Every endpoint of the run, open for the block (simulators started, clients connected).

    ``adapted`` is what an earlier session of the run learned a server refuses (each
    endpoint's request shape starts from it); ``shared`` (a shard of a sharded run) gives the
    URL of each simulated endpoint's simulator, which the driver serves for every shard.
    Raises ConfigError as ``check_endpoints``.
    """
    simulated = check_endpoints(config, env)
    opened: list[OpenEndpoint] = []
    async with contextlib.AsyncExitStack() as stack:
        for i, (entry, sim) in enumerate(zip(config.endpoints(), simulated, strict=True)):
            url = shared[i] if shared is not None else None
            if sim and url is not None:
                base_url, key = url, None
            elif sim:
                # Each simulated endpoint is a simulator of its own; only the first may take
                # the configured port.
                settings = config.sim if i == 0 else dataclasses.replace(config.sim, port=0)
                server = await stack.enter_async_context(run_simulator(settings))
                base_url, key = server.base_url, None
            else:
                base_url, key = entry.base_url, config.endpoint_key(entry, env)
            shape = RequestShape(
                ShapeSettings.from_config(
                    entry,
                    profile,
                    run_name=config.run.name,
                    openai_like=sim or hosted_by_openai(entry.base_url),
                ),
                adapted=dict(adapted),
            )
            client = await stack.enter_async_context(
                ChatClient(entry, base_url=base_url, api_key=key, shape=shape)
            )
            opened.append(OpenEndpoint(entry, base_url, key, sim, client, shape))
        yield opened
