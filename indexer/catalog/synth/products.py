"""Invent the products of a synthetic catalogue.

Attributes (a brand leans towards its house style), title, description, price within the
price band, launch date (new arrivals launch after the cutoff) and a photo path to draw later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType

import numpy as np

from newarrivals.indexer.arrays import I64Array
from newarrivals.indexer.catalog.schema import Product, TextSource
from newarrivals.indexer.catalog.synth.config import SECONDS_PER_DAY, SynthConfig
from newarrivals.indexer.catalog.synth.vocabulary import (
    BRANDS,
    GARMENT_TYPES,
    HOUSE_STYLE_PROBABILITY,
    MATERIALS,
    PATTERNS,
    PRICE_BANDS,
    STYLES,
    attribute_values,
    colour_named,
    garment_type,
    lookup_words,
)

__all__ = ["make_products"]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(*words: str) -> str:
    return " ".join(w for w in words if w)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _write_title(attrs: Mapping[str, str], brand: str, rng: np.random.Generator) -> str:
    """One of several title templates, with synonyms; always names the type."""
    garment = garment_type(attrs["type"])
    kind = _pick(rng, garment.words)
    colour = _pick(rng, colour_named(attrs["colour"]).words)
    pattern = _pick(rng, lookup_words(PATTERNS, attrs["pattern"]))
    material = _pick(rng, lookup_words(MATERIALS, attrs["material"]))
    style = _pick(rng, lookup_words(((s, a) for s, a, _ in STYLES), attrs["style"]))
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
    garment = garment_type(attrs["type"])
    kind = _pick(rng, garment.words)
    colour = _pick(rng, colour_named(attrs["colour"]).words)
    pattern_words = tuple(w for w in lookup_words(PATTERNS, attrs["pattern"]) if w)
    material = _pick(rng, lookup_words(MATERIALS, attrs["material"]))
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


def _sample_attributes(rng: np.random.Generator) -> tuple[dict[str, str], str, str]:
    """Attributes, brand and gender of one product; style leans to the brand's house style."""
    garment = GARMENT_TYPES[int(rng.integers(len(GARMENT_TYPES)))]
    brand, house_style = BRANDS[int(rng.integers(len(BRANDS)))]
    style = (
        house_style
        if rng.random() < HOUSE_STYLE_PROBABILITY
        else _pick(rng, attribute_values("style"))
    )
    if garment.women_only:
        gender = "Women"
    elif garment.group == "Accessories":
        gender = "Unisex"
    else:
        gender = _pick(rng, ("Women", "Men", "Unisex"))
    attrs = {
        "type": garment.name,
        "colour": _pick(rng, attribute_values("colour")),
        "pattern": _pick(rng, attribute_values("pattern")),
        "material": _pick(rng, garment.materials),
        "style": style,
        "price_band": _pick(rng, attribute_values("price_band")),
    }
    return attrs, brand, gender


def _price(band_name: str, rng: np.random.Generator) -> float:
    band = next(b for b in PRICE_BANDS if b.name == band_name)
    # Shop prices end in .99 (or .00 for round luxury prices); keep them inside the band.
    raw = float(rng.uniform(band.low, band.high))
    price = math.floor(raw) + 0.99 if band.name != "luxury" else float(round(raw, -1))
    return min(max(price, band.low), band.high)


def _launch_seconds(config: SynthConfig, rng: np.random.Generator) -> tuple[I64Array, I64Array]:
    """Launch offsets (seconds from ``start``) and the indices of the new arrivals.

    Old products launch between one history-length before ``start`` and the cutoff, so the
    catalogue is never empty; new arrivals launch in the first half of the hold-out window,
    leaving every one of them time to be seen.
    """
    n, n_new = config.n_products, config.n_new_arrivals
    cutoff_s = (config.n_days - config.holdout_days) * SECONDS_PER_DAY
    new_idx = np.sort(rng.choice(n, size=n_new, replace=False)).astype(np.int64)
    launch = rng.integers(-config.n_days * SECONDS_PER_DAY, cutoff_s, size=n)
    window = max(1, config.holdout_days * SECONDS_PER_DAY // 2)
    launch[new_idx] = cutoff_s + rng.integers(0, window, size=n_new)
    return launch.astype(np.int64), new_idx


def make_products(
    config: SynthConfig, rng: np.random.Generator
) -> tuple[list[Product], I64Array, I64Array]:
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
        garment = garment_type(attrs["type"])
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
