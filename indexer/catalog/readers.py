"""Read the generic catalogue schema from JSON Lines, CSV or Parquet (writing: :mod:`.writers`).

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

A round trip through :func:`~newarrivals.indexer.catalog.writers.write_catalog` and
:func:`read_catalog` is the example in :mod:`newarrivals.indexer.catalog.writers`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

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
"""Formats :func:`~newarrivals.indexer.catalog.writers.write_catalog` writes (and reads find)."""

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
    for source, product in quarantine.keep_first(
        path,
        rows,
        lambda values: _parse_product(values, image_base),
        key=lambda product: product.product_id,
        name="product_id",
    ):
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
