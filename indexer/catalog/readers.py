"""Read and write the generic catalogue schema as JSON Lines, CSV or Parquet.

The format is chosen by the file suffix: ``.jsonl``/``.ndjson``/``.json`` (JSON Lines, one
object per line), ``.csv`` and ``.parquet``. Field names are those of
:class:`~newarrivals.indexer.catalog.schema.Product` and
:class:`~newarrivals.indexer.catalog.schema.Interaction`.

How values are read (the same rules for every format):

* ``product_id`` / ``user_id``: required, strings, surrounding whitespace stripped. CSV
  cells are always read as text, so ``"00123"`` stays ``"00123"``; a JSON or Parquet number
  is refused rather than guessed at, because its leading zeros are already gone.
* ``category``: ``"A > B > C"``, ``"A>B"``, ``"A/B/C"`` (``>`` wins when both appear, so
  ``"Women > Leggings/Tights"`` keeps its slash) or a JSON array (a list in JSON Lines or
  Parquet).
* ``price``: optional, a finite number >= 0.
* ``attributes``: a JSON object (a JSON object string in CSV, a map or JSON string in
  Parquet); values become strings (non-strings are JSON-encoded, nulls dropped). Columns the
  schema does not know whose values are scalars (strings, numbers, booleans) are folded into
  ``attributes`` under the column name, unless ``attributes`` already has that key; other
  unknown values (lists, objects) are ignored.
* ``image``: a relative path is resolved against the file's own directory and a
  ``file://`` URI becomes a path; the result is stored as an absolute path. A missing file
  is kept as it is (the build stage decodes images and quarantines unreadable ones); a
  remote URL (``http://``...) is refused, since nothing downstream downloads.
* ``launched_at`` / ``timestamp``: ISO-8601 date or datetime (a naive value is UTC; a
  date is midnight UTC), or epoch seconds (a number, or a numeric string that is not an
  ISO basic date such as ``20200920``); always returned timezone-aware in UTC.
* ``available``: ``true/false/1/0/yes/no`` (any case) or a boolean; default ``True``.
* ``text_source``: ``own`` (default), ``sibling`` or ``none``.
* ``event``: ``view``, ``click``, ``cart``, ``purchase``, plus the aliases ``add_to_cart``
  and ``addtocart`` (cart) and ``buy``, ``order`` and ``transaction`` (purchase).

An empty CSV cell means "not given". A row that cannot be used (no id, a duplicate product
id, an unparsable value, malformed JSON, a value of the wrong type, a CSV row with the wrong
number of fields) becomes a :class:`~newarrivals.indexer.catalog.schema.Reject` that names the file,
its 1-based line (CSV: the header is line 1; Parquet: the row number, said so in the reason)
and the bad value, and reading carries on; with ``strict=True`` the first one raises
:class:`~newarrivals.indexer.errors.CatalogError`. Of two rows with the same product id the
first is kept.

Example:
    >>> from pathlib import Path
    >>> import tempfile
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

from newarrivals.indexer.catalog.cells import (
    parse_attributes,
    parse_bool,
    parse_category,
    parse_event,
    parse_id,
    parse_image,
    parse_optional_timestamp,
    parse_price,
    parse_text,
    parse_text_source,
    parse_timestamp,
)
from newarrivals.indexer.catalog.hm import (
    ARTICLES_FILE,
    TRANSACTIONS_FILE,
    is_hm_layout,
    read_hm,
)
from newarrivals.indexer.catalog.rows import (
    Quarantine,
    RowError,
    absolute_path,
    iter_rows,
)
from newarrivals.indexer.catalog.schema import (
    Catalog,
    Interaction,
    Product,
    Reject,
    SourceRef,
)
from newarrivals.indexer.errors import CatalogError, ConfigError

__all__ = [
    "READ_SUFFIXES",
    "WRITE_FORMATS",
    "read_catalog",
    "read_interactions",
    "read_products",
    "write_catalog",
    "write_rejects",
]

READ_SUFFIXES: Mapping[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
"""File suffix -> format read."""

WRITE_FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")
"""Formats :func:`write_catalog` writes (also the suffixes :func:`read_catalog` looks for)."""

PRODUCT_COLUMNS: tuple[str, ...] = (
    "product_id",
    "title",
    "description",
    "category",
    "brand",
    "price",
    "attributes",
    "image",
    "launched_at",
    "available",
    "text_source",
)
INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "product_id", "event", "timestamp")


def read_products(path: Path, *, strict: bool = False) -> Catalog:
    """Read a products file in the generic schema.

    Args:
        path: A ``.jsonl``/``.ndjson``/``.json`` (JSON Lines), ``.csv`` or ``.parquet`` file.
        strict: Raise on the first bad row instead of quarantining it.

    Returns:
        A catalogue with the good products (file order), the rejects, the source line of
        every product in ``provenance`` and ``root`` set to the file's directory.

    Raises:
        ConfigError: The suffix is not one of the readable formats.
        CatalogError: The file is missing or unreadable, has no ``product_id`` column, or
            (strict) a row is bad.
    """
    path = absolute_path(path)
    fmt = _format_of(path)
    base_dir = path.parent
    quarantine = Quarantine(
        kind="product", strict=strict, row_label="row" if fmt == "parquet" else ""
    )
    products: list[Product] = []
    provenance: dict[str, SourceRef] = {}
    rows = iter_rows(path, fmt, required=("product_id",))
    image_base = str(base_dir)
    for source, row, product in quarantine.parse(
        path, rows, lambda values: _parse_product(values, image_base)
    ):
        first = provenance.get(product.product_id)
        if first is not None:
            quarantine.refuse(
                source,
                f"duplicate product_id {product.product_id!r} (first seen at {first}; "
                "the first row is kept)",
                row,
            )
            continue
        provenance[product.product_id] = source
        products.append(product)
    return Catalog(
        products=products, rejects=quarantine.rejects, provenance=provenance, root=base_dir
    )


def read_interactions(
    path: Path, *, strict: bool = False
) -> tuple[list[Interaction], list[Reject]]:
    """Read an interactions file in the generic schema.

    Duplicate events are kept (two purchases of one product are two rows). Product ids are
    not checked against a catalogue here.

    Args:
        path: A ``.jsonl``/``.ndjson``/``.json`` (JSON Lines), ``.csv`` or ``.parquet`` file
            with ``user_id``, ``product_id``, ``event`` and ``timestamp``.
        strict: Raise on the first bad row instead of quarantining it.

    Returns:
        The good interactions in file order, and the rejects.

    Raises:
        ConfigError: The suffix is not one of the readable formats.
        CatalogError: The file is missing or unreadable, lacks a required column, or
            (strict) a row is bad.
    """
    path = absolute_path(path)
    fmt = _format_of(path)
    quarantine = Quarantine(
        kind="interaction", strict=strict, row_label="row" if fmt == "parquet" else ""
    )
    rows = iter_rows(path, fmt, required=INTERACTION_COLUMNS)
    interactions = [item for _, _, item in quarantine.parse(path, rows, _parse_interaction)]
    return interactions, quarantine.rejects


def read_catalog(path: Path, *, strict: bool = False) -> Catalog:
    """Read a catalogue from a folder or a single products file.

    ``path`` may be:

    * a folder with ``products.{jsonl,csv,parquet}`` and optionally
      ``interactions.{jsonl,csv,parquet}`` (generic schema);
    * a folder in the Kaggle H&M layout (``articles.csv`` and ``transactions_train.csv``),
      read by :func:`newarrivals.indexer.catalog.hm.read_hm`;
    * a single products file (no interactions).

    Args:
        path: The folder or file.
        strict: Raise on the first bad row instead of quarantining it.

    Returns:
        The catalogue; ``root`` is the folder (the file's folder for a single file) and
        ``rejects`` holds the refused rows of every file read.

    Raises:
        CatalogError: Nothing recognisable is there, or (strict) a row is bad.
        ConfigError: A single file has an unreadable suffix, or a folder holds two products
            (or two interactions) files in different formats.
    """
    path = absolute_path(path)
    if path.is_file():
        return read_products(path, strict=strict)
    if not path.is_dir():
        raise CatalogError(f"catalogue path {path} does not exist; pass a folder or a file.")
    if is_hm_layout(path):
        return read_hm(path, strict=strict)
    products_path = _find_table(path, "products")
    if products_path is None:
        looked_for = ", ".join(f"products.{fmt}" for fmt in WRITE_FORMATS)
        raise CatalogError(
            f"no catalogue found in {path}: looked for {looked_for} (generic schema, with "
            f"optional interactions.<same formats>) and for {ARTICLES_FILE} + "
            f"{TRANSACTIONS_FILE} (Kaggle H&M layout). Put one of them there or pass the "
            "products file itself."
        )
    catalog = read_products(products_path, strict=strict)
    interactions_path = _find_table(path, "interactions")
    if interactions_path is not None:
        interactions, rejects = read_interactions(interactions_path, strict=strict)
        catalog.interactions = interactions
        catalog.rejects.extend(rejects)
    catalog.root = path
    return catalog


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


def _format_of(path: Path) -> str:
    fmt = READ_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"cannot read {path}: unknown suffix {path.suffix or '(none)'!r}; use one of "
            f"{', '.join(READ_SUFFIXES)}."
        )
    return fmt


def _find_table(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}.{fmt}" for fmt in WRITE_FORMATS]
    found = [candidate for candidate in found if candidate.is_file()]
    if len(found) > 1:
        names = " and ".join(candidate.name for candidate in found)
        raise ConfigError(
            f"{folder} holds both {names}; keep one {stem} file so it is clear which to read."
        )
    return found[0] if found else None


def _parse_product(values: Mapping[str, object], base_dir: str) -> Product:
    attributes = parse_attributes(values.get("attributes"))
    # Unknown scalar columns (say "colour" or "material" in a shop export) carry product
    # facts; keeping them as attributes beats dropping them.
    for name, value in values.items():
        if name in PRODUCT_COLUMNS or name in attributes or value is None or value == "":
            continue
        if isinstance(value, str):
            attributes[name] = value
        elif isinstance(value, bool | int | float):
            attributes[name] = json.dumps(value)
    return Product(
        product_id=parse_id(values, "product_id"),
        title=parse_text(values, "title"),
        description=parse_text(values, "description"),
        category=parse_category(values.get("category")),
        brand=parse_text(values, "brand"),
        price=parse_price(values.get("price")),
        attributes=attributes,
        image=parse_image(values.get("image"), base_dir),
        launched_at=parse_optional_timestamp(values.get("launched_at"), "launched_at"),
        available=parse_bool(values.get("available"), "available", default=True),
        text_source=parse_text_source(values.get("text_source")),
    )


def _parse_interaction(values: Mapping[str, object]) -> Interaction:
    timestamp = values.get("timestamp")
    if timestamp is None or timestamp == "":
        raise RowError("missing timestamp (every interaction needs one)")
    return Interaction(
        user_id=parse_id(values, "user_id"),
        product_id=parse_id(values, "product_id"),
        event=parse_event(values.get("event")),
        timestamp=parse_timestamp(timestamp, "timestamp"),
    )


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
