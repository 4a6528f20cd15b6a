"""Checks that config dataclasses share; each raises ConfigError naming the field and value."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from newarrivals.indexer.errors import ConfigError

__all__ = [
    "require_flag",
    "require_fraction",
    "require_int",
    "require_known_fields",
    "require_positive",
]


def require_int(name: str, value: object, *, minimum: int = 1) -> None:
    """An int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {expected}, got {value!r}.")


def require_positive(name: str, value: object) -> None:
    """A finite number > 0 (not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}.")


def require_fraction(name: str, value: object, *, below_one: bool = False) -> None:
    """A number in [0, 1], or [0, 1) with ``below_one``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        upper_ok = value < 1.0 if below_one else value <= 1.0
        if value >= 0.0 and upper_ok:
            return
    bound = "[0, 1)" if below_one else "[0, 1]"
    raise ConfigError(f"{name} must be a number in {bound}, got {value!r}.")


def require_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")


def require_known_fields(cls: type[Any], data: Mapping[str, Any]) -> None:
    """A ``from_dict`` input names only fields of the dataclass ``cls`` (catches typos)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(known)}.")
