"""A seeded synthetic fashion catalogue: the embedded default data set and the quality oracle.

The generator invents products (attributes, title, description, price, launch date, photo),
shoppers with hidden tastes, and a history of views, carts and purchases those tastes drive.
Because the tastes are known, tests can check a recommender against the ideal ranking
instead of against another model.

How the world works, in one paragraph: every shopper has a probability distribution over
each taste attribute (type, colour, pattern, style, price band), drawn from a Dirichlet with
low concentration, so each shopper loves a few values. A product's utility for a shopper is
the sum of the log-probabilities of its attribute values plus a small per-product appeal
term. At each event the shopper picks a product already launched at that moment with
probability proportional to ``exp(utility / temperature)``; at the default temperature of 1
that choice factorises into "pick a type by taste, a colour by taste, ...". Views can become
carts and carts purchases. The last ``holdout_days`` of history come after the cutoff: new
arrivals launch then, and part of each shopper's attention goes to them (the held-out
future a new-arrivals recommender must predict).

Photos are drawn with PIL so that type (silhouette), colour (fill) and pattern (overlay) can
be learnt from the pixels. :func:`generate` is pure and in memory; :func:`write_synthetic`
draws the photos and writes everything to a directory.

Example:
    >>> synth = generate(SynthConfig(n_products=50, n_users=5))
    >>> len(synth.catalog.products), synth.cutoff > synth.config.start
    (50, True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from newarrivals.indexer.catalog.schema import Catalog, EventType, Interaction, Product, TextSource
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.validation import (
    require_fraction,
    require_int,
    require_known_fields,
    require_positive,
)

__all__ = [
    "ATTRIBUTE_VALUES",
    "BRANDS",
    "COLOURS",
    "GARMENT_TYPES",
    "MATERIALS",
    "PATTERNS",
    "PRICE_BANDS",
    "STYLES",
    "TASTE_ATTRIBUTES",
    "Colour",
    "GarmentType",
    "GroundTruth",
    "PriceBand",
    "SynthConfig",
    "SyntheticCatalog",
    "draw_product_image",
    "generate",
    "load_ground_truth",
    "write_synthetic",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GROUND_TRUTH_FILE = "ground_truth.json"
_GROUND_TRUTH_VERSION = 1
_SECONDS_PER_DAY = 86_400

# Independent random streams, so that e.g. changing how photos are drawn never changes
# which products or events are generated.
_STREAM_PRODUCTS, _STREAM_USERS, _STREAM_EVENTS, _STREAM_IMAGES = range(4)


# --------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------

ShapeKind = Literal["polygon", "ellipse", "chord", "rectangle"]


@dataclass(frozen=True, slots=True)
class _Shape:
    """One primitive of a silhouette, in unit coordinates (0..1, y down).

    ``cut`` shapes are erased from the garment mask (openings, seams, handle holes).
    """

    kind: ShapeKind
    coords: tuple[float, ...]
    cut: bool = False
    angles: tuple[float, float] = (0.0, 360.0)


def _poly(*points: tuple[float, float], cut: bool = False) -> _Shape:
    return _Shape("polygon", tuple(c for p in points for c in p), cut)


def _ellipse(x0: float, y0: float, x1: float, y1: float, *, cut: bool = False) -> _Shape:
    return _Shape("ellipse", (x0, y0, x1, y1), cut)


def _rect(x0: float, y0: float, x1: float, y1: float, *, cut: bool = False) -> _Shape:
    return _Shape("rectangle", (x0, y0, x1, y1), cut)


@dataclass(frozen=True, slots=True)
class GarmentType:
    """A product type: its catalogue group, the words for it, materials, and silhouette."""

    name: str
    group: str
    words: tuple[str, ...]
    materials: tuple[str, ...]
    shapes: tuple[_Shape, ...]
    women_only: bool = False
    plural: bool = False


@dataclass(frozen=True, slots=True)
class Colour:
    """A colour: its name, its RGB fill in photos, and the words for it."""

    name: str
    rgb: tuple[int, int, int]
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PriceBand:
    """A price band and the closed price range inside it."""

    name: str
    low: float
    high: float


_LONG_SLEEVED_BODY = (
    (0.38, 0.14),
    (0.44, 0.19),
    (0.56, 0.19),
    (0.62, 0.14),
    (0.80, 0.20),
    (0.95, 0.74),
    (0.84, 0.77),
    (0.74, 0.42),
    (0.76, 0.86),
    (0.24, 0.86),
    (0.26, 0.42),
    (0.16, 0.77),
    (0.05, 0.74),
    (0.20, 0.20),
)

GARMENT_TYPES: tuple[GarmentType, ...] = (
    GarmentType(
        "t-shirt",
        "Tops",
        ("T-shirt", "tee", "crew-neck T-shirt"),
        ("cotton", "linen", "polyester"),
        (
            _poly(
                (0.37, 0.14), (0.44, 0.18), (0.56, 0.18), (0.63, 0.14), (0.82, 0.21),
                (0.93, 0.40), (0.79, 0.46), (0.72, 0.37), (0.72, 0.88), (0.28, 0.88),
                (0.28, 0.37), (0.21, 0.46), (0.07, 0.40), (0.18, 0.21),
            ),
        ),
    ),
    GarmentType(
        "shirt",
        "Tops",
        ("shirt", "button-down shirt", "button-up shirt"),
        ("cotton", "linen", "polyester"),
        (
            _poly(
                (0.38, 0.12), (0.50, 0.22), (0.62, 0.12), (0.79, 0.18), (0.93, 0.82),
                (0.83, 0.84), (0.72, 0.42), (0.72, 0.90), (0.28, 0.90), (0.28, 0.42),
                (0.17, 0.84), (0.07, 0.82), (0.21, 0.18),
            ),
            *(_ellipse(0.48, y, 0.52, y + 0.04, cut=True) for y in (0.32, 0.46, 0.60, 0.74)),
        ),
    ),
    GarmentType(
        "sweater",
        "Tops",
        ("sweater", "jumper", "knit sweater"),
        ("wool", "cotton"),
        (_poly(*_LONG_SLEEVED_BODY), _rect(0.24, 0.79, 0.76, 0.81, cut=True)),
    ),
    GarmentType(
        "hoodie",
        "Tops",
        ("hoodie", "hooded sweatshirt", "zip hoodie"),
        ("cotton", "polyester"),
        (
            _ellipse(0.33, 0.01, 0.67, 0.30),
            _poly(*_LONG_SLEEVED_BODY),
            _ellipse(0.42, 0.07, 0.58, 0.22, cut=True),
            _rect(0.36, 0.60, 0.64, 0.62, cut=True),
        ),
    ),
    GarmentType(
        "jacket",
        "Outerwear",
        ("jacket", "zip jacket", "light jacket"),
        ("denim", "leather", "wool", "polyester", "cotton"),
        (
            _poly(
                (0.38, 0.12), (0.50, 0.40), (0.62, 0.12), (0.80, 0.18), (0.93, 0.80),
                (0.83, 0.82), (0.73, 0.42), (0.74, 0.80), (0.26, 0.80), (0.27, 0.42),
                (0.17, 0.82), (0.07, 0.80), (0.20, 0.18),
            ),
            _rect(0.49, 0.40, 0.51, 0.80, cut=True),
        ),
    ),
    GarmentType(
        "coat",
        "Outerwear",
        ("coat", "overcoat", "long coat"),
        ("wool", "polyester", "leather", "cotton"),
        (
            _poly(
                (0.39, 0.06), (0.50, 0.34), (0.61, 0.06), (0.77, 0.11), (0.90, 0.70),
                (0.81, 0.72), (0.72, 0.36), (0.75, 0.97), (0.25, 0.97), (0.28, 0.36),
                (0.19, 0.72), (0.10, 0.70), (0.23, 0.11),
            ),
            _rect(0.27, 0.54, 0.73, 0.57, cut=True),
            _rect(0.49, 0.57, 0.51, 0.97, cut=True),
        ),
    ),
    GarmentType(
        "dress",
        "Dresses",
        ("dress", "midi dress", "day dress"),
        ("cotton", "linen", "polyester", "wool"),
        (
            _poly(
                (0.37, 0.06), (0.41, 0.06), (0.42, 0.19), (0.58, 0.19), (0.59, 0.06),
                (0.63, 0.06), (0.64, 0.38), (0.86, 0.95), (0.14, 0.95), (0.36, 0.38),
            ),
        ),
        women_only=True,
    ),
    GarmentType(
        "skirt",
        "Bottoms",
        ("skirt", "A-line skirt", "midi skirt"),
        ("cotton", "linen", "wool", "denim", "leather", "polyester"),
        (
            _poly((0.33, 0.22), (0.67, 0.22), (0.85, 0.80), (0.15, 0.80)),
            _rect(0.30, 0.29, 0.70, 0.31, cut=True),
        ),
        women_only=True,
    ),
    GarmentType(
        "trousers",
        "Bottoms",
        ("trousers", "slacks", "tailored trousers"),
        ("cotton", "linen", "wool", "polyester"),
        (
            _poly(
                (0.29, 0.06), (0.71, 0.06), (0.74, 0.96), (0.56, 0.96), (0.50, 0.32),
                (0.44, 0.96), (0.26, 0.96),
            ),
        ),
        plural=True,
    ),
    GarmentType(
        "jeans",
        "Bottoms",
        ("jeans", "denim jeans", "five-pocket jeans"),
        ("denim",),
        (
            _poly(
                (0.31, 0.06), (0.69, 0.06), (0.71, 0.60), (0.79, 0.96), (0.57, 0.96),
                (0.50, 0.30), (0.43, 0.96), (0.21, 0.96), (0.29, 0.60),
            ),
            _rect(0.30, 0.12, 0.70, 0.14, cut=True),
            _poly((0.34, 0.16), (0.42, 0.16), (0.34, 0.26), cut=True),
            _poly((0.58, 0.16), (0.66, 0.16), (0.66, 0.26), cut=True),
        ),
        plural=True,
    ),
    GarmentType(
        "shorts",
        "Bottoms",
        ("shorts", "bermuda shorts", "summer shorts"),
        ("cotton", "linen", "denim", "polyester"),
        (
            _poly(
                (0.24, 0.22), (0.76, 0.22), (0.83, 0.66), (0.56, 0.70), (0.50, 0.44),
                (0.44, 0.70), (0.17, 0.66),
            ),
        ),
        plural=True,
    ),
    GarmentType(
        "cap",
        "Accessories",
        ("cap", "baseball cap", "peaked cap"),
        ("cotton", "wool", "polyester", "denim"),
        (
            _Shape("chord", (0.18, 0.24, 0.78, 0.84), angles=(180.0, 360.0)),
            _poly((0.46, 0.52), (0.93, 0.52), (0.96, 0.61), (0.46, 0.58)),
            _ellipse(0.45, 0.19, 0.51, 0.25),
        ),
    ),
    GarmentType(
        "bag",
        "Accessories",
        ("bag", "tote bag", "shoulder bag"),
        ("leather", "cotton", "polyester", "denim"),
        (
            _ellipse(0.29, 0.10, 0.71, 0.66),
            _ellipse(0.36, 0.17, 0.64, 0.66, cut=True),
            _poly((0.17, 0.42), (0.83, 0.42), (0.87, 0.90), (0.13, 0.90)),
        ),
    ),
    GarmentType(
        "sneakers",
        "Shoes",
        ("sneakers", "trainers", "low-top sneakers"),
        ("leather", "polyester", "cotton"),
        (
            _poly(
                (0.07, 0.56), (0.30, 0.52), (0.44, 0.38), (0.60, 0.36), (0.68, 0.50),
                (0.90, 0.58), (0.94, 0.74), (0.06, 0.74),
            ),
            _rect(0.06, 0.66, 0.94, 0.68, cut=True),
        ),
        plural=True,
    ),
    GarmentType(
        "boots",
        "Shoes",
        ("boots", "ankle boots", "chelsea boots"),
        ("leather",),
        (
            _poly(
                (0.29, 0.08), (0.61, 0.08), (0.63, 0.56), (0.87, 0.66), (0.91, 0.90),
                (0.25, 0.90), (0.27, 0.56),
            ),
            _rect(0.25, 0.83, 0.91, 0.85, cut=True),
        ),
        plural=True,
    ),
    GarmentType(
        "socks",
        "Accessories",
        ("socks", "crew socks", "ankle socks"),
        ("cotton", "wool", "polyester"),
        tuple(
            shape
            for dx in (0.0, 0.36)
            for shape in (
                _poly(
                    (0.14 + dx, 0.08), (0.30 + dx, 0.08), (0.30 + dx, 0.58), (0.46 + dx, 0.70),
                    (0.42 + dx, 0.84), (0.22 + dx, 0.80), (0.14 + dx, 0.68),
                ),
                _rect(0.14 + dx, 0.15, 0.30 + dx, 0.17, cut=True),
            )
        ),
        plural=True,
    ),
)  # fmt: skip

COLOURS: tuple[Colour, ...] = (
    Colour("black", (28, 28, 30), ("black", "jet black", "onyx")),
    Colour("white", (250, 250, 247), ("white", "optic white", "snow white")),
    Colour("grey", (128, 128, 128), ("grey", "heather grey", "stone grey")),
    Colour("navy", (28, 38, 92), ("navy", "navy blue", "midnight blue")),
    Colour("blue", (50, 110, 210), ("blue", "royal blue", "cobalt blue")),
    Colour("red", (200, 30, 40), ("red", "scarlet", "cherry red")),
    Colour("pink", (240, 140, 180), ("pink", "rose pink", "blush pink")),
    Colour("green", (40, 140, 60), ("green", "forest green", "emerald green")),
    Colour("yellow", (245, 205, 40), ("yellow", "mustard yellow", "lemon yellow")),
    Colour("beige", (215, 190, 150), ("beige", "sand", "camel")),
    Colour("brown", (120, 75, 40), ("brown", "chocolate brown", "cognac")),
)

# Words per pattern; "" lets some plain titles leave the pattern unsaid.
PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("plain", ("plain", "solid", "")),
    ("striped", ("striped", "stripe", "Breton-stripe")),
    ("checked", ("checked", "check", "gingham")),
    ("dotted", ("polka-dot", "dotted", "spotted")),
    ("floral", ("floral", "flower-print", "botanical-print")),
    ("animal", ("leopard-print", "animal-print", "leopard")),
)

MATERIALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cotton", ("cotton", "organic cotton", "cotton jersey")),
    ("linen", ("linen", "linen-blend", "pure linen")),
    ("wool", ("wool", "merino wool", "wool-blend")),
    ("denim", ("denim", "stretch denim", "rigid denim")),
    ("leather", ("leather", "full-grain leather", "soft leather")),
    ("polyester", ("polyester", "recycled polyester", "technical fabric")),
)

# Per style: adjectives for titles/descriptions, and occasions for descriptions.
STYLES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "casual",
        ("casual", "relaxed", "easy everyday"),
        ("weekends and everyday errands", "laid-back days off"),
    ),
    (
        "formal",
        ("formal", "tailored", "sharp"),
        ("the office and evening events", "meetings, weddings and dinners out"),
    ),
    (
        "sporty",
        ("sporty", "athletic", "performance"),
        ("the gym, runs and active weekends", "training and time outdoors"),
    ),
    (
        "vintage",
        ("vintage", "retro", "heritage-inspired"),
        ("anyone who loves a classic look", "flea-market fans and classic wardrobes"),
    ),
    (
        "streetwear",
        ("streetwear", "urban", "oversized street"),
        ("city days and skate sessions", "gigs, city nights and street style"),
    ),
)

PRICE_BANDS: tuple[PriceBand, ...] = (
    PriceBand("budget", 5.0, 25.0),
    PriceBand("mid", 25.0, 60.0),
    PriceBand("premium", 60.0, 150.0),
    PriceBand("luxury", 150.0, 450.0),
)

# Brand and its house style: a brand's products lean towards that style.
BRANDS: tuple[tuple[str, str], ...] = (
    ("Northwind", "casual"),
    ("Aurelia", "formal"),
    ("Kestrel", "sporty"),
    ("Old Harbour", "vintage"),
    ("Concrete Club", "streetwear"),
    ("Marlow & Finch", "formal"),
    ("Basecamp", "sporty"),
    ("Tidewater", "casual"),
)

# The attributes shoppers have tastes over, in a fixed order. Material is deliberately not
# a taste: it is descriptive noise a model has to learn to discount.
TASTE_ATTRIBUTES: tuple[str, ...] = ("type", "colour", "pattern", "style", "price_band")

ATTRIBUTE_VALUES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("type", tuple(t.name for t in GARMENT_TYPES)),
    ("colour", tuple(c.name for c in COLOURS)),
    ("pattern", tuple(name for name, _ in PATTERNS)),
    ("material", tuple(name for name, _ in MATERIALS)),
    ("style", tuple(name for name, _, _ in STYLES)),
    ("price_band", tuple(b.name for b in PRICE_BANDS)),
)

_HOUSE_STYLE_PROBABILITY = 0.6
# Mixed into every Dirichlet taste so no value is impossible (log-taste stays finite).
_TASTE_SMOOTHING = 0.05
# Standard deviation of the per-product appeal term added to every shopper's utility.
_APPEAL_SD = 0.3


def _values(attribute: str) -> tuple[str, ...]:
    for name, values in ATTRIBUTE_VALUES:
        if name == attribute:
            return values
    raise ConfigError(
        f"Unknown attribute {attribute!r}; use one of {[n for n, _ in ATTRIBUTE_VALUES]}."
    )


def _lookup(table: Iterable[tuple[str, tuple[str, ...]]], key: str) -> tuple[str, ...]:
    for name, words in table:
        if name == key:
            return words
    raise CatalogError(f"Unknown value {key!r}.")  # unreachable for generated products


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """The hidden state behind a synthetic catalogue: what a perfect recommender would know.

    ``user_tastes[user][attribute][value]`` is the probability the shopper gives that
    attribute value (each inner dict sums to 1). ``product_appeal`` is the per-product term
    every shopper shares. :meth:`true_utility` combines them exactly as the simulator did.
    """

    config: SynthConfig
    cutoff: datetime
    new_arrival_ids: tuple[str, ...]
    user_tastes: dict[str, dict[str, dict[str, float]]]
    product_attributes: dict[str, dict[str, str]]
    product_appeal: dict[str, float]

    def true_utility(self, user_id: str, product_id: str) -> float:
        """The shopper's utility for the product: sum of log-tastes plus the product's appeal.

        Choice probabilities among available products are ``softmax(utility / temperature)``.

        Raises:
            KeyError: if the user or product is unknown.
        """
        tastes = self.user_tastes[user_id]
        attrs = self.product_attributes[product_id]
        return self.product_appeal[product_id] + sum(
            math.log(tastes[a][attrs[a]]) for a in TASTE_ATTRIBUTES
        )

    def relevance_matrix(self, user_ids: Sequence[str], product_ids: Sequence[str]) -> FloatArray:
        """True utilities, shape ``(len(user_ids), len(product_ids))``; higher is better."""
        out = np.zeros((len(user_ids), len(product_ids)))
        out += np.array([self.product_appeal[p] for p in product_ids])[None, :]
        for attribute in TASTE_ATTRIBUTES:
            values = _values(attribute)
            position = {v: i for i, v in enumerate(values)}
            log_taste = np.log(
                np.array([[self.user_tastes[u][attribute][v] for v in values] for u in user_ids])
            )
            idx = np.array(
                [position[self.product_attributes[p][attribute]] for p in product_ids],
                dtype=np.int64,
            )
            out += log_taste[:, idx]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": _GROUND_TRUTH_VERSION,
            "config": self.config.to_dict(),
            "cutoff": self.cutoff.isoformat(),
            "new_arrival_ids": list(self.new_arrival_ids),
            "user_tastes": self.user_tastes,
            "product_attributes": self.product_attributes,
            "product_appeal": self.product_appeal,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroundTruth:
        version = data.get("format_version")
        if version != _GROUND_TRUTH_VERSION:
            raise CatalogError(
                f"Ground truth format_version {version!r} is not supported; expected "
                f"{_GROUND_TRUTH_VERSION}. Regenerate it with write_synthetic()."
            )
        return cls(
            config=SynthConfig.from_dict(data["config"]),
            cutoff=datetime.fromisoformat(data["cutoff"]),
            new_arrival_ids=tuple(data["new_arrival_ids"]),
            user_tastes=data["user_tastes"],
            product_attributes=data["product_attributes"],
            product_appeal={k: float(v) for k, v in data["product_appeal"].items()},
        )


@dataclass
class SyntheticCatalog:
    """A generated catalogue plus the ground truth that produced it.

    Products with a photo carry ``image="images/<product_id>.png"`` (relative, not yet
    drawn) until :func:`write_synthetic` draws them and sets absolute paths.

    Example:
        >>> synth = generate(SynthConfig(n_products=60, n_users=4, seed=1))
        >>> user = next(iter(synth.user_tastes))
        >>> isinstance(synth.true_utility(user, synth.new_arrival_ids[0]), float)
        True
    """

    catalog: Catalog
    truth: GroundTruth

    @property
    def config(self) -> SynthConfig:
        return self.truth.config

    @property
    def cutoff(self) -> datetime:
        return self.truth.cutoff

    @property
    def new_arrival_ids(self) -> list[str]:
        return list(self.truth.new_arrival_ids)

    @property
    def user_tastes(self) -> dict[str, dict[str, dict[str, float]]]:
        return self.truth.user_tastes

    def true_utility(self, user_id: str, product_id: str) -> float:
        """See :meth:`GroundTruth.true_utility`."""
        return self.truth.true_utility(user_id, product_id)

    def relevance_matrix(self, user_ids: Sequence[str], product_ids: Sequence[str]) -> FloatArray:
        """See :meth:`GroundTruth.relevance_matrix`."""
        return self.truth.relevance_matrix(user_ids, product_ids)


# --------------------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------------------


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(*words: str) -> str:
    return " ".join(w for w in words if w)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _write_title(attrs: Mapping[str, str], brand: str, rng: np.random.Generator) -> str:
    """One of several title templates, with synonyms; always names the type."""
    garment = _garment(attrs["type"])
    kind = _pick(rng, garment.words)
    colour = _pick(rng, _colour(attrs["colour"]).words)
    pattern = _pick(rng, _lookup(PATTERNS, attrs["pattern"]))
    material = _pick(rng, _lookup(MATERIALS, attrs["material"]))
    style = _pick(rng, _lookup(((s, a) for s, a, _ in STYLES), attrs["style"]))
    template = int(rng.integers(5))
    if template == 0:
        title = _join(colour, pattern, kind)
    elif template == 1:
        title = _join(brand, colour, pattern, material, kind)
    elif template == 2:
        title = _join(style, colour, kind) + (f" in {pattern} {material}" if pattern else "")
    elif template == 3:
        title = _join(pattern, material, kind) + f" - {colour}"
    else:
        title = _join(colour, material, kind) + (f", {pattern}" if pattern else "")
    return _sentence(title)


_CARE: Mapping[str, str] = MappingProxyType(
    {
        "cotton": "Machine wash at 30°C.",
        "linen": "Machine wash cold; it softens with every wash.",
        "wool": "Hand wash or dry clean.",
        "denim": "Wash inside out to keep the colour.",
        "leather": "Wipe clean; treat with leather balm.",
        "polyester": "Machine wash at 40°C; quick-drying.",
    }
)


_AUDIENCE: Mapping[str, str] = MappingProxyType(
    {"Women": "women", "Men": "men", "Unisex": "everyone"}
)


def _with_article(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _write_description(
    attrs: Mapping[str, str], brand: str, gender: str, rng: np.random.Generator
) -> str:
    """Two to four sentences from the attributes, in a random order after the first."""
    garment = _garment(attrs["type"])
    kind = _pick(rng, garment.words)
    colour = _pick(rng, _colour(attrs["colour"]).words)
    pattern_words = tuple(w for w in _lookup(PATTERNS, attrs["pattern"]) if w)
    material = _pick(rng, _lookup(MATERIALS, attrs["material"]))
    (style_words, occasions) = next((a, o) for s, a, o in STYLES if s == attrs["style"])
    pattern_clause = (
        "" if attrs["pattern"] == "plain" else f" with a {_pick(rng, pattern_words)} pattern"
    )
    style = _pick(rng, style_words)
    style = style if garment.plural else _with_article(style)
    first = _sentence(f"{style} {kind} in {colour} {material}")
    first += f"{pattern_clause}."
    extras = [
        f"Made for {_pick(rng, occasions)}.",
        _CARE[attrs["material"]],
        f"Designed by {brand} for {_AUDIENCE[gender]}.",
        f"A {attrs['price_band']} pick from our {garment.group.lower()} range.",
    ]
    order = rng.permutation(len(extras))[: int(rng.integers(1, len(extras)))]
    return " ".join([first, *(extras[i] for i in order)])


def _garment(name: str) -> GarmentType:
    for garment in GARMENT_TYPES:
        if garment.name == name:
            return garment
    raise CatalogError(
        f"Unknown product type {name!r}; use one of {[g.name for g in GARMENT_TYPES]}."
    )


def _colour(name: str) -> Colour:
    for colour in COLOURS:
        if colour.name == name:
            return colour
    raise CatalogError(f"Unknown colour {name!r}; use one of {[c.name for c in COLOURS]}.")


def _sample_attributes(rng: np.random.Generator) -> tuple[dict[str, str], str, str]:
    """Attributes, brand and gender of one product; style leans to the brand's house style."""
    garment = GARMENT_TYPES[int(rng.integers(len(GARMENT_TYPES)))]
    brand, house_style = BRANDS[int(rng.integers(len(BRANDS)))]
    style = house_style if rng.random() < _HOUSE_STYLE_PROBABILITY else _pick(rng, _values("style"))
    if garment.women_only:
        gender = "Women"
    elif garment.group == "Accessories":
        gender = "Unisex"
    else:
        gender = _pick(rng, ("Women", "Men", "Unisex"))
    attrs = {
        "type": garment.name,
        "colour": _pick(rng, _values("colour")),
        "pattern": _pick(rng, _values("pattern")),
        "material": _pick(rng, garment.materials),
        "style": style,
        "price_band": _pick(rng, _values("price_band")),
    }
    return attrs, brand, gender


def _price(band_name: str, rng: np.random.Generator) -> float:
    band = next(b for b in PRICE_BANDS if b.name == band_name)
    # Shop prices end in .99 (or .00 for round luxury prices); keep them inside the band.
    raw = float(rng.uniform(band.low, band.high))
    price = math.floor(raw) + 0.99 if band.name != "luxury" else float(round(raw, -1))
    return min(max(price, band.low), band.high)


def _launch_seconds(config: SynthConfig, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
    """Launch offsets (seconds from ``start``) and the indices of the new arrivals.

    Old products launch between one history-length before ``start`` and the cutoff, so the
    catalogue is never empty; new arrivals launch in the first half of the hold-out window,
    leaving every one of them time to be seen.
    """
    n, n_new = config.n_products, config.n_new_arrivals
    cutoff_s = (config.n_days - config.holdout_days) * _SECONDS_PER_DAY
    new_idx = np.sort(rng.choice(n, size=n_new, replace=False)).astype(np.int64)
    launch = rng.integers(-config.n_days * _SECONDS_PER_DAY, cutoff_s, size=n)
    window = max(1, config.holdout_days * _SECONDS_PER_DAY // 2)
    launch[new_idx] = cutoff_s + rng.integers(0, window, size=n_new)
    return launch.astype(np.int64), new_idx


def _make_products(
    config: SynthConfig, rng: np.random.Generator
) -> tuple[list[Product], IntArray, IntArray]:
    """The products, their launch offsets in seconds, and the new-arrival indices."""
    launch_s, new_idx = _launch_seconds(config, rng)
    is_new = np.zeros(config.n_products, dtype=bool)
    is_new[new_idx] = True
    # One draw decides text/photo status, so image-only and text-only never overlap.
    status = rng.random(config.n_products)
    no_text = status < config.no_text_fraction
    no_image = status >= 1.0 - config.missing_image_fraction
    no_description = rng.random(config.n_products) < config.missing_description_fraction
    unavailable = (rng.random(config.n_products) < config.unavailable_fraction) & ~is_new
    width = max(6, len(str(config.n_products)))

    products = []
    for i in range(config.n_products):
        attrs, brand, gender = _sample_attributes(rng)
        product_id = f"P{i + 1:0{width}d}"
        title, description = "", ""
        if not no_text[i]:
            title = _write_title(attrs, brand, rng)
            if not no_description[i]:
                description = _write_description(attrs, brand, gender, rng)
        garment = _garment(attrs["type"])
        products.append(
            Product(
                product_id=product_id,
                title=title,
                description=description,
                category=(gender, garment.group, _sentence(garment.words[0])),
                brand=brand,
                price=_price(attrs["price_band"], rng),
                attributes=attrs,
                image=None if no_image[i] else f"images/{product_id}.png",
                launched_at=config.start + timedelta(seconds=int(launch_s[i])),
                available=not unavailable[i],
                text_source=TextSource.NONE if no_text[i] else TextSource.OWN,
            )
        )
    return products, launch_s, new_idx


# --------------------------------------------------------------------------------------
# Shoppers and events
# --------------------------------------------------------------------------------------


def _make_tastes(config: SynthConfig, rng: np.random.Generator) -> dict[str, FloatArray]:
    """Per attribute, an ``(n_users, n_values)`` matrix of taste probabilities."""
    tastes = {}
    for attribute in TASTE_ATTRIBUTES:
        k = len(_values(attribute))
        raw = rng.dirichlet(np.full(k, config.taste_concentration), size=config.n_users)
        tastes[attribute] = (1.0 - _TASTE_SMOOTHING) * raw + _TASTE_SMOOTHING / k
    return tastes


def _attribute_indices(products: Sequence[Product]) -> dict[str, IntArray]:
    out = {}
    for attribute in TASTE_ATTRIBUTES:
        position = {v: i for i, v in enumerate(_values(attribute))}
        out[attribute] = np.array(
            [position[p.attributes[attribute]] for p in products], dtype=np.int64
        )
    return out


@dataclass(frozen=True, slots=True)
class _Pool:
    """Products sorted by launch, with launch offsets, for prefix sampling by time."""

    order: IntArray
    launch: IntArray

    @classmethod
    def of(cls, indices: IntArray, launch_s: IntArray) -> _Pool:
        order = indices[np.argsort(launch_s[indices], kind="stable")]
        return cls(order, launch_s[order])

    def sample(self, weights: FloatArray, times: FloatArray, rng: np.random.Generator) -> IntArray:
        """For each time, a product launched by then, drawn ∝ weight; -1 where none exists.

        A cumulative sum over launch order turns "launched by t" into a prefix, so each
        draw is a binary search instead of a renormalised softmax per event.
        """
        if len(self.order) == 0:
            return np.full(len(times), -1, dtype=np.int64)
        cum = np.cumsum(weights[self.order])
        k = np.searchsorted(self.launch, times, side="right")
        totals = cum[np.maximum(k - 1, 0)]
        pos = np.searchsorted(cum, rng.random(len(times)) * totals, side="right")
        chosen = self.order[np.minimum(pos, np.maximum(k - 1, 0))]
        return np.where(k > 0, chosen, -1).astype(np.int64)


def _simulate_user(
    config: SynthConfig,
    utility: FloatArray,
    old: _Pool,
    new: _Pool,
    rng: np.random.Generator,
) -> list[tuple[float, int, EventType]]:
    """One shopper's events as (seconds from start, product index, event type)."""
    total_s = config.n_days * _SECONDS_PER_DAY
    cutoff_s = (config.n_days - config.holdout_days) * _SECONDS_PER_DAY
    events_per_view = 1.0 + config.cart_rate * (1.0 + config.purchase_rate)
    # Gamma-mixed Poisson: a few heavy shoppers and many light ones, as in real logs.
    rate = config.events_per_user / events_per_view * rng.gamma(2.0, 0.5)
    n_views = max(1, int(rng.poisson(rate)))
    times = np.sort(rng.uniform(0.0, total_s, size=n_views))

    weights = np.exp((utility - utility.max()) / config.temperature)
    from_old = old.sample(weights, times, rng)
    from_new = new.sample(weights, times, rng)
    want_new = (times >= cutoff_s) & (rng.random(n_views) < config.new_arrival_share)
    chosen = np.where(want_new & (from_new >= 0), from_new, from_old)

    carted = rng.random(n_views) < config.cart_rate
    bought = carted & (rng.random(n_views) < config.purchase_rate)
    cart_delay = rng.uniform(60.0, 1800.0, size=n_views)
    buy_delay = rng.uniform(60.0, 3600.0, size=n_views)
    last = float(total_s - 1)
    events: list[tuple[float, int, EventType]] = []
    for j in np.flatnonzero(chosen >= 0):
        t, p = float(times[j]), int(chosen[j])
        events.append((t, p, EventType.VIEW))
        if carted[j]:
            t_cart = min(t + cart_delay[j], last)
            events.append((t_cart, p, EventType.CART))
            if bought[j]:
                events.append((min(t_cart + buy_delay[j], last), p, EventType.PURCHASE))
    return events


def _simulate_events(
    config: SynthConfig,
    products: Sequence[Product],
    launch_s: IntArray,
    new_idx: IntArray,
    tastes: Mapping[str, FloatArray],
    appeal: FloatArray,
    user_ids: Sequence[str],
    rng: np.random.Generator,
) -> list[Interaction]:
    is_new = np.zeros(len(products), dtype=bool)
    is_new[new_idx] = True
    old = _Pool.of(np.flatnonzero(~is_new).astype(np.int64), launch_s)
    new = _Pool.of(new_idx, launch_s)
    index = _attribute_indices(products)
    log_tastes = {a: np.log(tastes[a]) for a in TASTE_ATTRIBUTES}

    interactions = []
    for u, user_id in enumerate(user_ids):
        utility = appeal + sum(log_tastes[a][u][index[a]] for a in TASTE_ATTRIBUTES)
        for seconds, p, event in _simulate_user(config, utility, old, new, rng):
            interactions.append(
                Interaction(
                    user_id=user_id,
                    product_id=products[p].product_id,
                    event=event,
                    timestamp=config.start + timedelta(seconds=math.floor(seconds)),
                )
            )
    interactions.sort(key=lambda e: (e.timestamp, e.user_id))
    return interactions


def generate(config: SynthConfig) -> SyntheticCatalog:
    """Generate the catalogue, shoppers and history in memory (photos are not drawn yet).

    Args:
        config: What to generate; the same config always gives identical output.

    Returns:
        The catalogue (products and interactions) and its ground truth.

    Example:
        >>> synth = generate(SynthConfig(n_products=40, n_users=3, seed=7))
        >>> {e.event.value for e in synth.catalog.interactions} <= {"view", "cart", "purchase"}
        True
    """
    products, launch_s, new_idx = _make_products(config, _stream(config.seed, _STREAM_PRODUCTS))
    user_rng = _stream(config.seed, _STREAM_USERS)
    tastes = _make_tastes(config, user_rng)
    appeal = user_rng.normal(0.0, _APPEAL_SD, size=config.n_products)
    width = max(5, len(str(config.n_users)))
    user_ids = [f"U{u + 1:0{width}d}" for u in range(config.n_users)]
    interactions = _simulate_events(
        config,
        products,
        launch_s,
        new_idx,
        tastes,
        appeal,
        user_ids,
        _stream(config.seed, _STREAM_EVENTS),
    )
    truth = GroundTruth(
        config=config,
        cutoff=config.cutoff,
        new_arrival_ids=tuple(products[i].product_id for i in new_idx),
        user_tastes={
            user_id: {
                a: {v: float(tastes[a][u, k]) for k, v in enumerate(_values(a))}
                for a in TASTE_ATTRIBUTES
            }
            for u, user_id in enumerate(user_ids)
        },
        product_attributes={p.product_id: dict(p.attributes) for p in products},
        product_appeal={p.product_id: float(appeal[i]) for i, p in enumerate(products)},
    )
    return SyntheticCatalog(
        catalog=Catalog(products=products, interactions=interactions), truth=truth
    )


# --------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------

RGB = tuple[int, int, int]


def _jitter_colour(rgb: RGB, rng: np.random.Generator, sd: float) -> RGB:
    r, g, b = (int(np.clip(c + rng.normal(0.0, sd), 0, 255)) for c in rgb)
    return (r, g, b)


def _contrast(rgb: RGB) -> RGB:
    """A shade (for light fills) or tint (for dark fills) of the fill colour.

    Deriving the pattern colour from the fill keeps a patterned product's average colour
    close to its named colour, so colour stays learnable from the pixels.
    """
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if luminance > 140:
        r, g, b = (int(c * 0.35) for c in rgb)
    else:
        r, g, b = (int(c * 0.45 + 255 * 0.55) for c in rgb)
    return (r, g, b)


def _draw_pattern(
    draw: ImageDraw.ImageDraw, pattern: str, ink: RGB, size: int, rng: np.random.Generator
) -> None:
    """Draw the pattern over the whole canvas; the garment mask crops it later."""
    if pattern == "plain":
        return
    if pattern == "striped":
        period = size * rng.uniform(0.09, 0.13)
        # Ink stays a minority (here and below) so the fill remains the product's colour.
        band = period * 0.35
        vertical = rng.random() < 0.3
        pos = -rng.uniform(0.0, period)
        while pos < size:
            # PIL rectangles include both corners, hence the -1; integer corners because
            # Pillow refuses a float box whose rounded end falls before its start (small photos).
            start = round(pos)
            end = max(start, round(pos + band) - 1)
            box = (start, 0, end, size) if vertical else (0, start, size, end)
            draw.rectangle(box, fill=ink)
            pos += period
    elif pattern == "checked":
        # A windowpane grid of lines both ways: distinct from stripes, about a third ink.
        cell = size * rng.uniform(0.08, 0.11)
        line = max(1, round(cell * 0.2))
        x0, y0 = rng.uniform(0.0, cell, size=2)
        for k in range(int(size / cell) + 2):
            x, y = round(x0 + (k - 1) * cell), round(y0 + (k - 1) * cell)
            draw.rectangle((x, 0, x + line - 1, size), fill=ink)
            draw.rectangle((0, y, size, y + line - 1), fill=ink)
    elif pattern == "dotted":
        spacing = size * rng.uniform(0.09, 0.12)
        radius = spacing * 0.22
        x0, y0 = rng.uniform(0.0, spacing, size=2)
        for row in range(int(size / spacing) + 2):
            offset = spacing / 2 if row % 2 else 0.0
            for col in range(int(size / spacing) + 2):
                x, y = x0 + offset + col * spacing - spacing, y0 + row * spacing - spacing
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)
    elif pattern == "floral":
        petal = size * 0.028
        centre_ink = (245, 215, 60) if ink != (245, 215, 60) else (255, 255, 255)
        for _ in range(int(rng.integers(22, 30))):
            cx, cy = rng.uniform(0.0, size, size=2)
            for k in range(5):
                angle = 2 * math.pi * k / 5
                px, py = cx + petal * math.cos(angle), cy + petal * math.sin(angle)
                draw.ellipse((px - petal, py - petal, px + petal, py + petal), fill=ink)
            draw.ellipse((cx - petal * 0.6, cy - petal * 0.6, cx + petal * 0.6, cy + petal * 0.6),
                         fill=centre_ink)  # fmt: skip
    elif pattern == "animal":
        # Irregular rosettes of random size and aspect, unlike the regular dot grid.
        for _ in range(int(rng.integers(35, 50))):
            cx, cy = rng.uniform(0.0, size, size=2)
            rx, ry = size * rng.uniform(0.02, 0.05), size * rng.uniform(0.015, 0.035)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=ink)
    else:
        raise CatalogError(f"Unknown pattern {pattern!r}; use one of {list(_values('pattern'))}.")


def _draw_mask(garment: GarmentType, size: int, rng: np.random.Generator) -> Image.Image:
    """The garment silhouette as an ``L`` mask, with random placement and scale."""
    scale = rng.uniform(0.82, 1.0)
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04, size=2)

    def to_px(coords: tuple[float, ...]) -> list[float]:
        out = []
        for i, c in enumerate(coords):
            centre = cx if i % 2 == 0 else cy
            out.append((centre + (c - 0.5) * scale) * size)
        return out

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for shape in garment.shapes:
        fill = 0 if shape.cut else 255
        xy = to_px(shape.coords)
        if shape.kind == "polygon":
            draw.polygon(xy, fill=fill)
        elif shape.kind == "ellipse":
            draw.ellipse(xy, fill=fill)
        elif shape.kind == "rectangle":
            draw.rectangle(xy, fill=fill)
        else:
            draw.chord(xy, shape.angles[0], shape.angles[1], fill=fill)
    return mask


def draw_product_image(
    attributes: Mapping[str, str], rng: np.random.Generator, size: int = 96
) -> Image.Image:
    """Draw a product photo: silhouette from type, fill from colour, overlay from pattern.

    Position, scale and colours are jittered with ``rng`` so no two photos are identical,
    yet type, colour and pattern stay recognisable from the pixels.

    Args:
        attributes: At least ``type``, ``colour`` and ``pattern`` (see ``ATTRIBUTE_VALUES``).
        rng: The random source for the jitter.
        size: Side of the square RGB image in pixels.

    Returns:
        An RGB image of ``size`` x ``size`` on a light background.

    Raises:
        CatalogError: if an attribute value is unknown.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> draw_product_image({"type": "cap", "colour": "red", "pattern": "plain"}, rng).size
        (96, 96)
    """
    for key in ("type", "colour", "pattern"):
        if key not in attributes:
            raise CatalogError(
                f"attributes must include {key!r} to draw a photo, got keys {sorted(attributes)}."
            )
    garment = _garment(attributes["type"])
    fill = _jitter_colour(_colour(attributes["colour"]).rgb, rng, 6.0)
    grey = int(rng.integers(222, 240))
    background = Image.new("RGB", (size, size), _jitter_colour((grey, grey, grey - 4), rng, 3.0))

    cloth = Image.new("RGB", (size, size), fill)
    _draw_pattern(ImageDraw.Draw(cloth), attributes["pattern"], _contrast(fill), size, rng)
    mask = _draw_mask(garment, size, rng)
    photo = Image.composite(cloth, background, mask)
    # A dark outline keeps white and beige garments visible on the light background.
    outline = mask.filter(ImageFilter.FIND_EDGES)
    photo.paste((70, 70, 70), mask=outline)
    return photo


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_synthetic(
    synth: SyntheticCatalog, out_dir: Path, *, fmt: str = "jsonl", progress: bool = True
) -> Path:
    """Draw the photos and write the catalogue and its ground truth to ``out_dir``.

    Writes ``images/<product_id>.png``, the catalogue files of
    :func:`newarrivals.indexer.catalog.readers.write_catalog` (``products.<fmt>``,
    ``interactions.<fmt>``) and ``ground_truth.json``. ``synth`` is not modified.

    Args:
        synth: Output of :func:`generate`.
        out_dir: Target directory; created if missing; existing files are overwritten.
        fmt: Catalogue file format, passed to ``write_catalog``.
        progress: Show a progress bar while drawing photos.

    Returns:
        ``out_dir``.
    """
    from newarrivals.indexer.catalog.readers import (
        write_catalog,  # readers pulls in pandas; only writers need it
    )

    out_dir = Path(out_dir).resolve()
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    config = synth.config

    products = []
    for i, product in enumerate(
        tqdm(synth.catalog.products, desc="drawing photos", unit="photo", disable=not progress)
    ):
        if product.image is None:
            products.append(product)
            continue
        # One stream per product: a photo depends only on the seed and the product's row.
        rng = _stream(config.seed, _STREAM_IMAGES, i)
        path = images / f"{product.product_id}.png"
        draw_product_image(product.attributes, rng, config.image_size).save(path, compress_level=1)
        products.append(replace(product, image=str(path)))

    catalog = Catalog(
        products=products, interactions=list(synth.catalog.interactions), root=out_dir
    )
    write_catalog(catalog, out_dir, fmt=fmt)
    (out_dir / GROUND_TRUTH_FILE).write_text(
        json.dumps(synth.truth.to_dict(), ensure_ascii=False), encoding="utf-8"
    )
    return out_dir


def load_ground_truth(path: Path) -> GroundTruth:
    """Read ``ground_truth.json`` written by :func:`write_synthetic`.

    Args:
        path: The JSON file, or the directory holding it.

    Raises:
        CatalogError: if the file is missing or of an unsupported version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / GROUND_TRUTH_FILE
    if not path.is_file():
        raise CatalogError(
            f"No ground truth at {path}; write one with write_synthetic(generate(config), dir)."
        )
    return GroundTruth.from_dict(json.loads(path.read_text(encoding="utf-8")))
