"""The generic catalogue schema: products, interactions, and quarantined rows.

Every reader (JSONL, CSV, Parquet, the H&M adapter, the synthetic generator) produces these
types, so the rest of the pipeline never sees a source format.

Product fields (serialised names are the field names):

==============  ===========================  ==============================================
field           type                         notes
==============  ===========================  ==============================================
product_id      str                          required, unique; never parsed as a number
title           str                          may be empty
description     str                          may be empty
category        tuple[str, ...]              a path, e.g. ``("Women", "Tops", "T-shirt")``;
                                             files may give ``"Women > Tops > T-shirt"``,
                                             ``"Women/Tops/T-shirt"`` or a JSON list
brand           str                          may be empty
price           float | None                 >= 0
attributes      dict[str, str]               free-form (colour, material, ...)
image           str | None                   absolute local path after reading (relative
                                             paths and ``file://`` URIs are resolved)
launched_at     datetime | None              timezone-aware UTC
available       bool                         unavailable products are never recommended
text_source     TextSource                   ``own``; ``sibling`` when the text was borrowed
                                             from another variant (H&M); ``none``
==============  ===========================  ==============================================

Interaction fields: ``user_id`` (str), ``product_id`` (str), ``event`` (view, click, cart,
purchase) and ``timestamp`` (timezone-aware UTC).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

__all__ = [
    "CATEGORY_SEPARATOR",
    "Catalog",
    "EventType",
    "Interaction",
    "Product",
    "Reject",
    "SourceRef",
    "TextSource",
    "product_document",
]

CATEGORY_SEPARATOR = " > "


class EventType(StrEnum):
    """What a user did with a product, weakest signal first."""

    VIEW = "view"
    CLICK = "click"
    CART = "cart"
    PURCHASE = "purchase"


class TextSource(StrEnum):
    """Where a product's text came from."""

    OWN = "own"
    SIBLING = "sibling"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Product:
    """One catalogue product in the generic schema.

    Example:
        >>> p = Product("sku-1", title="Red striped cotton T-shirt", category=("Tops", "T-shirt"))
        >>> p.has_text, p.has_image
        (True, False)
    """

    product_id: str
    title: str = ""
    description: str = ""
    category: tuple[str, ...] = ()
    brand: str = ""
    price: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    launched_at: datetime | None = None
    available: bool = True
    text_source: TextSource = TextSource.OWN

    @property
    def has_text(self) -> bool:
        return bool(self.title.strip() or self.description.strip())

    @property
    def has_image(self) -> bool:
        return bool(self.image)

    @property
    def category_path(self) -> str:
        return CATEGORY_SEPARATOR.join(self.category)

    def to_record(self) -> dict[str, object]:
        """A JSON-ready dict in the generic schema (the inverse of the readers)."""
        return {
            "product_id": self.product_id,
            "title": self.title,
            "description": self.description,
            "category": self.category_path,
            "brand": self.brand,
            "price": self.price,
            "attributes": dict(self.attributes),
            "image": self.image,
            "launched_at": self.launched_at.isoformat() if self.launched_at else None,
            "available": self.available,
            "text_source": self.text_source.value,
        }


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user event on one product."""

    user_id: str
    product_id: str
    event: EventType
    timestamp: datetime

    def to_record(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "product_id": self.product_id,
            "event": self.event.value,
            "timestamp": self.timestamp.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a row came from: the file and its 1-based line (CSV header is line 1)."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class Reject:
    """A quarantined input row: where it was, why it was refused, and its raw text."""

    source: SourceRef
    reason: str
    raw: str
    kind: str = "product"

    def to_record(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "path": self.source.path,
            "line": self.source.line,
            "reason": self.reason,
            "raw": self.raw,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_record(), ensure_ascii=False)


@dataclass(slots=True)
class Catalog:
    """Products and interactions read from one source, plus what was quarantined.

    ``provenance`` maps a product id to the row it came from, so a failure found later
    (an unreadable photo at encode time) can still be reported with its source line.
    """

    products: list[Product]
    interactions: list[Interaction] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    provenance: dict[str, SourceRef] = field(default_factory=dict)
    root: Path | None = None

    def product_ids(self) -> list[str]:
        return [p.product_id for p in self.products]


def product_document(product: Product) -> str:
    """The text a text encoder reads for a product; empty when the product has no text.

    Title first (it carries the most signal per token, and long descriptions get truncated),
    then category, brand and attributes, then the description.
    """
    if not product.has_text:
        return ""
    parts = [product.title.strip()]
    if product.category:
        parts.append(product.category_path)
    if product.brand:
        parts.append(product.brand)
    if product.attributes:
        parts.append(", ".join(f"{k}: {v}" for k, v in sorted(product.attributes.items()) if v))
    if product.description.strip():
        parts.append(product.description.strip())
    return ". ".join(p for p in parts if p)
