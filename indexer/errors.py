"""Domain exceptions shared by every stage.

Each error message says what is wrong, the offending value, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "ConfigError",
    "IndexIntegrityError",
    "MissingExtraError",
    "NewArrivalsError",
    "UnknownProductError",
]


class NewArrivalsError(Exception):
    """Base class for every error this project raises on purpose."""


class ConfigError(NewArrivalsError, ValueError):
    """A configuration value is invalid (names the field, the value and the valid choices)."""


class CatalogError(NewArrivalsError, ValueError):
    """Input data cannot be used (raised in strict mode, or when nothing usable is left)."""


class IndexIntegrityError(NewArrivalsError):
    """An index version on disk violates an invariant (names both disagreeing numbers)."""


class UnknownProductError(NewArrivalsError, KeyError):
    """A product id is not in the index."""

    def __str__(self) -> str:
        # KeyError repr-quotes its message; keep it readable.
        return str(self.args[0]) if self.args else "unknown product"


class MissingExtraError(NewArrivalsError, ImportError):
    """An optional dependency is missing (names the pip extra that brings it)."""
