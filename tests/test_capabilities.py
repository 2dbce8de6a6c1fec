"""The model capability table: data in the package, found by name, snapshot or family, and
overridable in the config."""

from __future__ import annotations

import pytest

from engine.capabilities import EFFORTS, CapabilityOverride, load_capabilities
from engine.errors import ConfigError

TABLE = load_capabilities()


def test_reasoning_models_of_today_are_known_and_refuse_sampling() -> None:
    """gpt-5-mini, o3 and o4-mini reason, take no temperature, and list their efforts."""
    for name in ("gpt-5-mini", "o3", "o4-mini", "gpt-5"):
        caps = TABLE.lookup(name)
        assert caps is not None and caps.reasoning, name
        assert not caps.temperature and not caps.top_p
        assert set(caps.efforts) <= set(EFFORTS) and "low" in caps.efforts
    gpt4o = TABLE.lookup("gpt-4o")
    assert gpt4o is not None and not gpt4o.reasoning and gpt4o.temperature
    assert gpt4o.context_window == 128_000


def test_snapshots_routers_and_families_resolve() -> None:
    """A dated snapshot, a router prefix and a newer point release all find their entry."""
    snap = TABLE.lookup("o3-2025-04-16")
    assert snap is not None and snap.model == "o3"
    routed = TABLE.lookup("openai/GPT-5-mini")
    assert routed is not None and routed.model == "gpt-5-mini"
    newer = TABLE.lookup("gpt-5.2")
    assert newer is not None and newer.reasoning and newer.flex
    assert TABLE.lookup("llama-3-8b-instruct") is None


def test_a_config_override_changes_only_what_it_sets() -> None:
    """An override keeps the table's other fields; a new model declared reasoning stops
    sending sampling settings unless told otherwise."""
    caps = TABLE.resolve("gpt-4o", {"gpt-4o": CapabilityOverride(max_output=4096)})
    assert caps is not None and caps.max_output == 4096 and caps.context_window == 128_000
    assert caps.origin == "config provider.capabilities"
    mine = TABLE.resolve("my-reasoner", {"my-reasoner": CapabilityOverride(reasoning=True)})
    assert mine is not None and mine.reasoning and not mine.temperature


def test_reasoning_room_grows_with_effort() -> None:
    """More effort, more room; an unset effort gets the default (medium) room."""
    rooms = [TABLE.room(e) for e in ("minimal", "low", "medium", "high")]
    assert rooms == sorted(rooms) and rooms[0] > 0
    assert TABLE.room(None) == TABLE.room("medium")


def test_a_malformed_table_or_override_is_refused() -> None:
    """Unknown keys, unknown efforts and impossible sizes are errors naming the entry."""
    with pytest.raises(ConfigError, match="unknown keys"):
        load_capabilities('as_of = 2025-01-01\n[reasoning_room]\n[models."x"]\ncolour = 1\n')
    with pytest.raises(ConfigError, match="ultra"):
        load_capabilities(
            'as_of = 2025-01-01\n[reasoning_room]\n[models."x"]\nefforts = ["ultra"]\n'
        )
    with pytest.raises(ValueError, match="at least 1"):
        CapabilityOverride(max_output=0)
