"""m2l's version, in a leaf module so the store can stamp it without importing the engine."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
