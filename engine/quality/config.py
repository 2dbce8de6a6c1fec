"""The quality checks' settings: the ``[quality]`` config section under its historical names.

``FilterConfig`` is ``engine.config.QualityConfig`` (one type, validated where it is defined);
``FilterConfigError`` is what code that builds one by hand catches. Nothing here raises.
"""

from __future__ import annotations

from engine.config import QualityConfig
from engine.errors import ConfigError

__all__ = ["DEFAULT_FILTER_CONFIG", "FilterConfig", "FilterConfigError"]


class FilterConfigError(ConfigError, ValueError):
    """A quality setting is out of range (raised by code that checks one outside load_config)."""


FilterConfig = QualityConfig
DEFAULT_FILTER_CONFIG = QualityConfig()
