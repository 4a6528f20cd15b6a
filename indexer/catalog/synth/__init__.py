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

from newarrivals.indexer.catalog.synth.config import SynthConfig
from newarrivals.indexer.catalog.synth.events import generate
from newarrivals.indexer.catalog.synth.photos import draw_product_image
from newarrivals.indexer.catalog.synth.truth import (
    GROUND_TRUTH_FILE,
    GroundTruth,
    SyntheticCatalog,
    load_ground_truth,
)
from newarrivals.indexer.catalog.synth.vocabulary import (
    ATTRIBUTE_VALUES,
    BRANDS,
    COLOURS,
    GARMENT_TYPES,
    MATERIALS,
    PATTERNS,
    PRICE_BANDS,
    STYLES,
    TASTE_ATTRIBUTES,
    Colour,
    GarmentType,
    PriceBand,
)
from newarrivals.indexer.catalog.synth.writer import write_synthetic

__all__ = [
    "ATTRIBUTE_VALUES",
    "BRANDS",
    "COLOURS",
    "GARMENT_TYPES",
    "GROUND_TRUTH_FILE",
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
