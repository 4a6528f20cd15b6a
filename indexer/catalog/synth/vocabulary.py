"""The words and shapes a synthetic catalogue is made of.

Garment types with their silhouettes (unit-square primitives the photos are drawn from), colours,
patterns, materials, styles, price bands and brands, plus the taste attributes shoppers have
preferences over and their values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from newarrivals.indexer.errors import CatalogError, ConfigError

__all__ = [
    "APPEAL_SD",
    "ATTRIBUTE_VALUES",
    "BRANDS",
    "COLOURS",
    "GARMENT_TYPES",
    "HOUSE_STYLE_PROBABILITY",
    "MATERIALS",
    "PATTERNS",
    "PRICE_BANDS",
    "RGB",
    "STYLES",
    "TASTE_ATTRIBUTES",
    "TASTE_SMOOTHING",
    "Colour",
    "GarmentType",
    "PriceBand",
    "Shape",
    "ShapeKind",
    "attribute_values",
    "colour_named",
    "garment_type",
    "lookup_words",
]

RGB = tuple[int, int, int]

ShapeKind = Literal["polygon", "ellipse", "chord", "rectangle"]


@dataclass(frozen=True, slots=True)
class Shape:
    """One primitive of a silhouette, in unit coordinates (0..1, y down).

    ``cut`` shapes are erased from the garment mask (openings, seams, handle holes).
    """

    kind: ShapeKind
    coords: tuple[float, ...]
    cut: bool = False
    angles: tuple[float, float] = (0.0, 360.0)


def _poly(*points: tuple[float, float], cut: bool = False) -> Shape:
    return Shape("polygon", tuple(c for p in points for c in p), cut)


def _ellipse(x0: float, y0: float, x1: float, y1: float, *, cut: bool = False) -> Shape:
    return Shape("ellipse", (x0, y0, x1, y1), cut)


def _rect(x0: float, y0: float, x1: float, y1: float, *, cut: bool = False) -> Shape:
    return Shape("rectangle", (x0, y0, x1, y1), cut)


@dataclass(frozen=True, slots=True)
class GarmentType:
    """A product type: its catalogue group, the words for it, materials, and silhouette."""

    name: str
    group: str
    words: tuple[str, ...]
    materials: tuple[str, ...]
    shapes: tuple[Shape, ...]
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
            Shape("chord", (0.18, 0.24, 0.78, 0.84), angles=(180.0, 360.0)),
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

HOUSE_STYLE_PROBABILITY = 0.6
# Mixed into every Dirichlet taste so no value is impossible (log-taste stays finite).
TASTE_SMOOTHING = 0.05
# Standard deviation of the per-product appeal term added to every shopper's utility.
APPEAL_SD = 0.3


def attribute_values(attribute: str) -> tuple[str, ...]:
    for name, values in ATTRIBUTE_VALUES:
        if name == attribute:
            return values
    raise ConfigError(
        f"Unknown attribute {attribute!r}; use one of {[n for n, _ in ATTRIBUTE_VALUES]}."
    )


def lookup_words(table: Iterable[tuple[str, tuple[str, ...]]], key: str) -> tuple[str, ...]:
    for name, words in table:
        if name == key:
            return words
    raise CatalogError(f"Unknown value {key!r}.")  # unreachable for generated products


def garment_type(name: str) -> GarmentType:
    for garment in GARMENT_TYPES:
        if garment.name == name:
            return garment
    raise CatalogError(
        f"Unknown product type {name!r}; use one of {[g.name for g in GARMENT_TYPES]}."
    )


def colour_named(name: str) -> Colour:
    for colour in COLOURS:
        if colour.name == name:
            return colour
    raise CatalogError(f"Unknown colour {name!r}; use one of {[c.name for c in COLOURS]}.")
