"""Baselines every content method must beat: random, type popularity, attribute affinity.

* **random**: every item scores alike, so the random tie-break *is* the ranking;
* **type popularity**: how often the item's product type was bought (the split's test
  event types) in the train period; new items have no popularity of their own, their type
  does;
* **personal attribute affinity**: for each of the user's own train purchases, 1 if it has
  the item's type, plus .5 for its colour, plus .5 for its department (H&M) or style
  (synthetic), summed. Missing attributes never match.

Attribute keys are :class:`AttributeKeys`: an attribute name (``"colour"``) or a category
level (``"category[-1]"``: the last element of the product's category path; H&M puts the
product type there).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation.methods import EvalData

__all__ = [
    "AttributeAffinity",
    "AttributeKeys",
    "RandomBaseline",
    "TypePopularity",
    "default_keys_for",
    "product_attribute",
]

_CATEGORY = re.compile(r"^category\[(-?\d+)\]$")


def product_attribute(product: Product | None, key: str) -> str | None:
    """The product's value for ``key`` (an attribute name or ``category[N]``), or ``None``.

    Example:
        >>> product_attribute(Product("p", category=("Women", "Tops", "Vest top")), "category[-1]")
        'Vest top'
    """
    if product is None:
        return None
    match = _CATEGORY.match(key)
    if match is None:
        return product.attributes.get(key) or None
    level = int(match.group(1))
    try:
        return product.category[level] or None
    except IndexError:
        return None


@dataclass(frozen=True)
class AttributeKeys:
    """Which product fields are the type, the colour and the department-like attribute.

    Args:
        type_key: H&M ``category[-1]`` (product type); synthetic ``type``.
        colour_key: ``colour`` for both.
        department_key: H&M ``department``; synthetic ``style``.
        weights: the affinity weights of (type, colour, department).
    """

    type_key: str = "type"
    colour_key: str = "colour"
    department_key: str = "style"
    weights: tuple[float, float, float] = (1.0, 0.5, 0.5)

    def __post_init__(self) -> None:
        for name in ("type_key", "colour_key", "department_key"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"attribute key {name} must not be empty.")
        weights = tuple(float(w) for w in self.weights)
        if len(weights) != 3 or any(not (np.isfinite(w) and w >= 0) for w in weights):
            raise ConfigError(
                f"affinity weights must be three finite numbers >= 0, got {self.weights!r}."
            )
        object.__setattr__(self, "weights", weights)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def keys(self) -> tuple[str, str, str]:
        return (self.type_key, self.colour_key, self.department_key)


@dataclass(frozen=True)
class RandomBaseline:
    """All items tie; the seeded tie-break orders them."""

    name: str = "random"

    def score(self, data: EvalData) -> F64Array:
        return np.zeros((data.n_users, data.n_items))


@dataclass(frozen=True)
class TypePopularity:
    """Train-period count of the test-event kind (purchases) per product type."""

    keys: AttributeKeys
    name: str = "popularity of product type (train)"

    def score(self, data: EvalData) -> F64Array:
        wanted = frozenset(data.split.test_events)
        counts = Counter(
            value
            for item in data.split.train
            if item.event in wanted
            and (value := product_attribute(data.products.get(item.product_id), self.keys.type_key))
        )
        row = np.array(
            [
                counts.get(product_attribute(data.products.get(p), self.keys.type_key) or "", 0)
                for p in data.split.cold_ids
            ],
            dtype=np.float64,
        )
        return np.broadcast_to(row, (data.n_users, data.n_items)).copy()


@dataclass(frozen=True)
class AttributeAffinity:
    """Sum over the user's train purchases of weighted type/colour/department matches."""

    keys: AttributeKeys
    name: str = "personal attribute affinity"

    def score(self, data: EvalData) -> F64Array:
        wanted = frozenset(data.split.test_events)
        scores = np.zeros((data.n_users, data.n_items))
        for key, weight in zip(self.keys.keys, self.keys.weights, strict=True):
            if weight == 0:
                continue
            item_values = [
                product_attribute(data.products.get(p), key) for p in data.split.cold_ids
            ]
            vocabulary = {v: i for i, v in enumerate(sorted({v for v in item_values if v}))}
            if not vocabulary:
                continue
            # counts[u, v]: how many of user u's purchases have value v; then look up per item.
            counts = np.zeros((data.n_users, len(vocabulary) + 1))
            for u, user in enumerate(data.split.test_users):
                for item in data.split.history[user]:
                    if item.event not in wanted:
                        continue
                    value = product_attribute(data.products.get(item.product_id), key)
                    if value in vocabulary:
                        counts[u, vocabulary[value]] += 1
            # Items without the attribute point at the last column, which stays zero.
            columns = np.array(
                [vocabulary[v] if v else len(vocabulary) for v in item_values], dtype=np.int64
            )
            scores += weight * counts[:, columns]
        return scores


def default_keys_for(products: Mapping[str, Product]) -> AttributeKeys:
    """Guess the keys for a generic-schema catalogue: ``type`` if products carry it, else
    the last category level; ``colour``; ``department`` if present, else ``style``."""
    sample = list(products.values())[:1000]

    def share(key: str) -> float:
        return sum(1 for p in sample if product_attribute(p, key)) / max(len(sample), 1)

    type_key = "type" if share("type") > 0 else "category[-1]"
    colour_key = next((k for k in ("colour", "color") if share(k) > 0), "colour")
    department_key = next((k for k in ("department", "style") if share(k) > 0), "department")
    return AttributeKeys(type_key=type_key, colour_key=colour_key, department_key=department_key)
