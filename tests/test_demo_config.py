"""The bundled demo config can never reach a paid API, whatever the environment holds."""

from __future__ import annotations

from pathlib import Path

from engine.config import load_config

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.toml"


def test_demo_uses_the_simulator_even_with_a_key_in_the_environment() -> None:
    """An exported OPENAI_API_KEY (common in a shell) leaves the demo on the simulator."""
    config = load_config(DEMO)
    key = "sk-" + "demo" * 10
    env = {config.provider.api_key_env: key, "OPENAI_API_KEY": key}
    assert config.provider.kind == "sim"
    assert config.uses_simulator(env)
    assert config.uses_simulator({})
