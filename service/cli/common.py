"""Helpers that several command groups share: filters, dates, printing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from newarrivals.indexer import NewArrivalsError
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.index.filters import Candidate, SearchFilter

__all__ = [
    "add_query_filters",
    "catalog_titles",
    "filter_from",
    "print_candidates",
    "utc_day",
]


def utc_day(flag: str, value: str | None) -> datetime | None:
    """An ISO date or datetime from the command line; naive means UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise NewArrivalsError(
            f"{flag} must be an ISO date like 2020-06-22, got {value!r}."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def filter_from(args: argparse.Namespace) -> SearchFilter:
    launched = utc_day("--launched-after", args.launched_after)
    return SearchFilter(
        category=args.category,
        min_price=args.min_price,
        max_price=args.max_price,
        launched_after=launched,
        available_only=not args.include_unavailable,
    )


def add_query_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--category", default=None, help="category path prefix, e.g. 'Women > Tops'")
    p.add_argument("--min-price", type=float, default=None)
    p.add_argument("--max-price", type=float, default=None)
    p.add_argument("--launched-after", default=None, help="ISO date: new arrivals only")
    p.add_argument("--include-unavailable", action="store_true")


def catalog_titles(catalog_path: Path | None) -> dict[str, Product]:
    if catalog_path is None:
        return {}
    return {p.product_id: p for p in read_catalog(catalog_path).products}


def print_candidates(cands: Sequence[Candidate], products: dict[str, Product]) -> None:
    for rank, c in enumerate(cands, 1):
        p = products.get(c.product_id)
        title = (p.title or "(no text)") if p else ""
        launched = p.launched_at.date().isoformat() if p and p.launched_at else ""
        print(f"  {rank:>3}. {c.product_id:<14} {c.score:6.3f}  {launched:<10}  {title[:60]}")
