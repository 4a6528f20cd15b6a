"""The settings that determine a synthetic catalogue, and the seeded random streams drawn from them.

Each part of the generator (products, shoppers, events, photos) draws from its own stream, so
changing how one part works never changes what another generates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.validation import (
    require_fraction,
    require_int,
    require_known_fields,
    require_positive,
)

__all__ = [
    "SECONDS_PER_DAY",
    "STREAM_EVENTS",
    "STREAM_IMAGES",
    "STREAM_PRODUCTS",
    "STREAM_USERS",
    "SynthConfig",
    "random_stream",
]


SECONDS_PER_DAY = 86_400

# Independent random streams, so that e.g. changing how photos are drawn never changes
# which products or events are generated.
STREAM_PRODUCTS, STREAM_USERS, STREAM_EVENTS, STREAM_IMAGES = range(4)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic catalogue; the same config gives the same data.

    Args:
        n_products: Number of products, old and new.
        n_users: Number of shoppers.
        seed: Seed of every random stream (non-negative).
        start: First instant of the interaction history (timezone-aware).
        n_days: Length of the history in days.
        holdout_days: The last ``holdout_days`` of history come after :attr:`cutoff`; new
            arrivals launch in the first half of this window.
        new_arrival_fraction: Share of products launched after the cutoff.
        missing_image_fraction: Share of products with no photo (they keep their text).
        missing_description_fraction: Share of products with an empty description.
        no_text_fraction: Share of products with neither title nor description (they keep
            their photo), so image-only products exist.
        unavailable_fraction: Share of old products that are no longer available.
        events_per_user: Mean number of events (views, carts, purchases) per shopper.
        cart_rate: Probability that a view leads to a cart.
        purchase_rate: Probability that a cart leads to a purchase.
        new_arrival_share: After the cutoff, the probability that a view goes to the new
            arrivals (when any have launched) rather than to the older catalogue.
        taste_concentration: Dirichlet concentration of shopper tastes; lower is more
            peaked (each shopper loves fewer values).
        temperature: Softmax temperature of product choice; 1 makes each attribute of a
            chosen product follow the shopper's taste for that attribute.
        image_size: Side of the square product photos in pixels.

    Example:
        >>> SynthConfig(n_products=100, n_users=10, seed=3).cutoff.isoformat()
        '2024-03-31T00:00:00+00:00'
    """

    n_products: int = 2000
    n_users: int = 300
    seed: int = 0
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    n_days: int = 120
    holdout_days: int = 30
    new_arrival_fraction: float = 0.15
    missing_image_fraction: float = 0.05
    missing_description_fraction: float = 0.10
    no_text_fraction: float = 0.02
    unavailable_fraction: float = 0.03
    events_per_user: float = 25.0
    cart_rate: float = 0.25
    purchase_rate: float = 0.4
    new_arrival_share: float = 0.5
    taste_concentration: float = 0.3
    temperature: float = 1.0
    image_size: int = 96

    def __post_init__(self) -> None:
        for name in ("n_products", "n_users", "n_days", "holdout_days", "image_size"):
            require_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.start, datetime) or self.start.utcoffset() is None:
            raise ConfigError(
                f"start must be a timezone-aware datetime, got {self.start!r}; "
                "pass e.g. datetime(2024, 1, 1, tzinfo=UTC)."
            )
        if self.holdout_days >= self.n_days:
            raise ConfigError(
                f"holdout_days must be smaller than n_days ({self.n_days}), got "
                f"{self.holdout_days}; the history before the cutoff would be empty."
            )
        if self.image_size < 32:
            raise ConfigError(
                f"image_size must be at least 32 pixels, got {self.image_size}; "
                "smaller photos cannot show a pattern."
            )
        require_fraction("new_arrival_fraction", self.new_arrival_fraction, below_one=True)
        for name in (
            "missing_image_fraction",
            "missing_description_fraction",
            "no_text_fraction",
            "unavailable_fraction",
            "cart_rate",
            "purchase_rate",
            "new_arrival_share",
        ):
            require_fraction(name, getattr(self, name))
        if self.missing_image_fraction + self.no_text_fraction > 1.0:
            raise ConfigError(
                "missing_image_fraction + no_text_fraction must be at most 1 (a product "
                f"needs a photo or text), got {self.missing_image_fraction} + "
                f"{self.no_text_fraction}."
            )
        for name in ("events_per_user", "taste_concentration", "temperature"):
            require_positive(name, getattr(self, name))
        if self.n_old_products < 1:
            raise ConfigError(
                f"new_arrival_fraction={self.new_arrival_fraction} leaves no old products "
                f"out of n_products={self.n_products}; lower it or add products."
            )

    @property
    def cutoff(self) -> datetime:
        """The instant new arrivals start launching: ``start + n_days - holdout_days``."""
        return self.start + timedelta(days=self.n_days - self.holdout_days)

    @property
    def end(self) -> datetime:
        """The end of the history (exclusive)."""
        return self.start + timedelta(days=self.n_days)

    @property
    def n_new_arrivals(self) -> int:
        return round(self.n_products * self.new_arrival_fraction)

    @property
    def n_old_products(self) -> int:
        return self.n_products - self.n_new_arrivals

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``start`` as ISO 8601); the inverse of :meth:`from_dict`."""
        out = asdict(self)
        out["start"] = self.start.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SynthConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error."""
        require_known_fields(cls, data)
        kwargs = dict(data)
        if isinstance(kwargs.get("start"), str):
            kwargs["start"] = datetime.fromisoformat(kwargs["start"])
        return cls(**kwargs)


def random_stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
