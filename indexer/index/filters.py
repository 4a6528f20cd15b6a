"""What a product search may return, and what it returns.

:class:`SearchFilter` is the filter a caller passes to
:meth:`ProductIndex.search <newarrivals.indexer.index.store.ProductIndex.search>` (category
prefix, price bounds, launch date, availability, excluded ids); :class:`Candidate` is one
result. Both are plain values, so the retrieval, ranking and serving code can build and read
them without importing the index itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import numpy as np

from newarrivals.indexer.catalog.schema import CATEGORY_SEPARATOR
from newarrivals.indexer.errors import ConfigError

__all__ = ["Candidate", "SearchFilter", "epoch_microseconds", "normalise_category"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Candidate:
    """One search result: a product id and its inner-product score (higher is closer)."""

    product_id: str
    score: float


@dataclass(frozen=True)
class SearchFilter:
    """Which products a search may return.

    Args:
        category: Category path prefix, matched case-insensitively on whole segments:
            ``"Women > Tops"`` matches ``Women > Tops > T-shirt`` but not
            ``Women > Topshop``. ``"/"`` also separates segments.
        min_price: Inclusive lower price bound; products without a price are excluded
            when either bound is set.
        max_price: Inclusive upper price bound.
        launched_after: Only products launched strictly after this timezone-aware time;
            products without ``launched_at`` are excluded when it is set.
        available_only: Drop products marked unavailable (the default: unavailable
            products are never recommended).
        exclude_ids: Product ids never to return (e.g. what the user already bought);
            unknown ids are ignored.

    Example:
        >>> from datetime import UTC, datetime
        >>> f = SearchFilter(category="Women > Tops", max_price=40.0,
        ...                  launched_after=datetime(2024, 5, 1, tzinfo=UTC),
        ...                  exclude_ids=frozenset({"sku-1"}))
        >>> f.category_prefix
        'women > tops'
    """

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    launched_after: datetime | None = None
    available_only: bool = True
    exclude_ids: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.category is not None and not normalise_category(self.category):
            raise ConfigError(
                f"category must be a non-empty path such as 'Women > Tops', got "
                f"{self.category!r}; pass None for no category filter."
            )
        for name in ("min_price", "max_price"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number or None, got {value!r}.")
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise ConfigError(
                f"min_price ({self.min_price}) is greater than max_price "
                f"({self.max_price}); swap them or drop one bound."
            )
        if self.launched_after is not None:
            if not isinstance(self.launched_after, datetime):
                raise ConfigError(
                    f"launched_after must be a datetime, got {self.launched_after!r}."
                )
            if self.launched_after.tzinfo is None:
                raise ConfigError(
                    f"launched_after must be timezone-aware, got naive "
                    f"{self.launched_after.isoformat()}; add tzinfo=UTC."
                )
        if not isinstance(self.available_only, bool):
            raise ConfigError(f"available_only must be True or False, got {self.available_only!r}.")
        exclude: object = self.exclude_ids
        if isinstance(exclude, str):
            raise ConfigError(
                f"exclude_ids must be a collection of product ids, got the string "
                f"{exclude!r}; wrap it: frozenset({{{exclude!r}}})."
            )
        if not isinstance(exclude, frozenset) and isinstance(exclude, Iterable):
            # Accept any iterable of ids but store it immutably (the filter is frozen).
            object.__setattr__(self, "exclude_ids", frozenset(exclude))

    @property
    def category_prefix(self) -> str | None:
        """The normalised (lower-cased, ``" > "``-joined) category prefix."""
        return None if self.category is None else normalise_category(self.category)


def normalise_category(path: str) -> str:
    """A category path lower-cased and ``" > "``-joined; ``/`` and ``>`` both separate segments."""
    parts = [p.strip().lower() for p in path.replace("/", ">").split(">")]
    return CATEGORY_SEPARATOR.join(p for p in parts if p)


def epoch_microseconds(moment: datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware time (exact integer arithmetic)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
