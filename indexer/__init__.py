"""Retrieval stage: catalogue -> text and image vectors -> FAISS index."""

from __future__ import annotations

from newarrivals.indexer.catalog.schema import (
    Catalog,
    EventType,
    Interaction,
    Product,
    Reject,
    SourceRef,
    TextSource,
    product_document,
)
from newarrivals.indexer.errors import (
    CatalogError,
    ConfigError,
    IndexIntegrityError,
    MissingExtraError,
    NewArrivalsError,
    UnknownProductError,
)

__all__ = [
    "Catalog",
    "CatalogError",
    "ConfigError",
    "EventType",
    "IndexIntegrityError",
    "Interaction",
    "MissingExtraError",
    "NewArrivalsError",
    "Product",
    "Reject",
    "SourceRef",
    "TextSource",
    "UnknownProductError",
    "product_document",
]
