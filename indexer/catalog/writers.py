"""Write a catalogue in the generic schema as JSON Lines, CSV or Parquet, and its rejects.

What :func:`write_catalog` writes, :func:`~newarrivals.indexer.catalog.readers.read_catalog`
reads back as equal objects: the columns and value rules are those of
:mod:`newarrivals.indexer.catalog.readers`.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> from newarrivals.indexer.catalog.readers import read_catalog
    >>> from newarrivals.indexer.catalog.schema import Catalog, Product
    >>> out = Path(tempfile.mkdtemp())
    >>> paths = write_catalog(Catalog([Product("00123", price=9.5)]), out, fmt="csv")
    >>> read_catalog(out).products[0].product_id
    '00123'
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from newarrivals.indexer.catalog.cells import parse_category
from newarrivals.indexer.catalog.readers import (
    INTERACTION_COLUMNS,
    PRODUCT_COLUMNS,
    READ_SUFFIXES,
    WRITE_FORMATS,
)
from newarrivals.indexer.catalog.rows import absolute_path
from newarrivals.indexer.catalog.schema import Catalog, Interaction, Product, Reject
from newarrivals.indexer.errors import ConfigError

__all__ = ["write_catalog", "write_rejects"]


def write_rejects(rejects: Sequence[Reject], path: Path) -> None:
    """Write quarantined rows as JSON Lines (one :meth:`Reject.to_json` per line).

    Args:
        rejects: The rows to write (an empty sequence writes an empty file).
        path: The file to write; missing parent folders are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for reject in rejects:
            handle.write(reject.to_json())
            handle.write("\n")


def write_catalog(catalog: Catalog, out_dir: Path, *, fmt: str = "jsonl") -> dict[str, Path]:
    """Write a catalogue in the generic schema; reading the folder back gives equal objects.

    Writes ``products.<fmt>`` and, when there are interactions, ``interactions.<fmt>``.
    Image paths inside ``out_dir`` are written relative to it, so the folder can be moved
    as a whole; other image paths stay absolute. Rejects and provenance are not written.
    Tables an earlier write left in ``out_dir`` in another format (or an interactions
    table when there are none now) are removed: :func:`read_catalog` would otherwise read
    stale rows, or refuse a folder with two products tables.

    Args:
        catalog: The catalogue to write.
        out_dir: The folder (created if missing).
        fmt: ``"jsonl"``, ``"csv"`` or ``"parquet"``.

    Returns:
        ``{"products": path}`` plus ``"interactions": path`` when interactions were written.

    Raises:
        ConfigError: ``fmt`` is not a known format.
    """
    if fmt not in WRITE_FORMATS:
        raise ConfigError(
            f"unknown catalogue format {fmt!r}; choose one of {', '.join(WRITE_FORMATS)}."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.normpath(absolute_path(out_dir)))
    written = {"products": out_dir / f"products.{fmt}"}
    keep = {f"products.{fmt}"} | ({f"interactions.{fmt}"} if catalog.interactions else set())
    for stem in ("products", "interactions"):
        for suffix in READ_SUFFIXES:
            stale = out_dir / f"{stem}{suffix}"
            if stale.name not in keep and stale.is_file():
                stale.unlink()
    product_rows = [_product_row(product, base) for product in catalog.products]
    interaction_rows = [_interaction_row(item) for item in catalog.interactions]
    if fmt == "jsonl":
        _write_jsonl(written["products"], [_json_ready(row) for row in product_rows])
    elif fmt == "csv":
        _write_csv(written["products"], PRODUCT_COLUMNS, [_csv_ready(r) for r in product_rows])
    else:
        _write_parquet(written["products"], _product_schema(), product_rows)
    if interaction_rows:
        written["interactions"] = out_dir / f"interactions.{fmt}"
        if fmt == "jsonl":
            _write_jsonl(written["interactions"], [_json_ready(r) for r in interaction_rows])
        elif fmt == "csv":
            _write_csv(
                written["interactions"],
                INTERACTION_COLUMNS,
                [_csv_ready(r) for r in interaction_rows],
            )
        else:
            _write_parquet(written["interactions"], _interaction_schema(), interaction_rows)
    return written


def _product_row(product: Product, base: Path) -> dict[str, object]:
    """A product as typed cells; the per-format writers turn them into text where needed."""
    return {
        "product_id": product.product_id,
        "title": product.title,
        "description": product.description,
        "category": list(product.category),
        "brand": product.brand,
        "price": product.price,
        "attributes": dict(product.attributes),
        "image": _portable_image(product.image, base),
        "launched_at": product.launched_at,
        "available": product.available,
        "text_source": product.text_source.value,
    }


def _interaction_row(item: Interaction) -> dict[str, object]:
    return {
        "user_id": item.user_id,
        "product_id": item.product_id,
        "event": item.event.value,
        "timestamp": item.timestamp,
    }


def _portable_image(image: str | None, base: Path) -> str | None:
    if not image:
        return image
    # String prefixes, not Path.relative_to: this runs once per product.
    prefix = os.path.join(base, "")  # noqa: PTH118 - the folder with a trailing separator
    normalised = os.path.normpath(image)
    if normalised.startswith(prefix):
        return Path(normalised[len(prefix) :]).as_posix()
    return image


def _category_cell(category: list[str]) -> str | list[str]:
    """The readable ``"A > B"`` form when it reads back the same, else the list."""
    text = " > ".join(category)
    return text if parse_category(text) == tuple(category) else category


def _json_ready(row: Mapping[str, object]) -> dict[str, object]:
    ready: dict[str, object] = {}
    for key, value in row.items():
        if key == "category" and isinstance(value, list):
            value = _category_cell(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        ready[key] = value
    return ready


def _csv_ready(row: Mapping[str, object]) -> list[str]:
    cells: list[str] = []
    for key, value in row.items():
        if key == "category" and isinstance(value, list):
            value = _category_cell(value)
        if value is None:
            cells.append("")
        elif isinstance(value, bool):
            cells.append("true" if value else "false")
        elif isinstance(value, datetime):
            cells.append(value.isoformat())
        elif isinstance(value, float):
            # repr is the shortest text that reads back as the same float.
            cells.append(repr(value))
        elif isinstance(value, dict):
            cells.append(json.dumps(value, ensure_ascii=False) if value else "")
        elif isinstance(value, list):
            cells.append(json.dumps(value, ensure_ascii=False))
        else:
            cells.append(str(value))
    return cells


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False))
            handle.write("\n")


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def _product_schema() -> pa.Schema:
    return pa.schema(
        [
            ("product_id", pa.string()),
            ("title", pa.string()),
            ("description", pa.string()),
            ("category", pa.list_(pa.string())),
            ("brand", pa.string()),
            ("price", pa.float64()),
            ("attributes", pa.map_(pa.string(), pa.string())),
            ("image", pa.string()),
            ("launched_at", pa.timestamp("us", tz="UTC")),
            ("available", pa.bool_()),
            ("text_source", pa.string()),
        ]
    )


def _interaction_schema() -> pa.Schema:
    return pa.schema(
        [
            ("user_id", pa.string()),
            ("product_id", pa.string()),
            ("event", pa.string()),
            ("timestamp", pa.timestamp("us", tz="UTC")),
        ]
    )


def _write_parquet(path: Path, schema: pa.Schema, rows: Sequence[Mapping[str, object]]) -> None:
    columns = {
        name: [
            list(value.items()) if isinstance(value, dict) else value
            for value in (row[name] for row in rows)
        ]
        for name in schema.names
    }
    pq.write_table(pa.table(columns, schema=schema), path)
