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
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.parquet as pq

from newarrivals.indexer.catalog.schema import (
    Catalog,
    EventType,
    Interaction,
    Product,
    Reject,
    SourceRef,
    TextSource,
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

_EVENT_ALIASES: Mapping[str, EventType] = {
    **{event.value: event for event in EventType},
    "add_to_cart": EventType.CART,
    "addtocart": EventType.CART,
    "buy": EventType.PURCHASE,
    "order": EventType.PURCHASE,
    "transaction": EventType.PURCHASE,
}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
# Epoch values this large are almost always milliseconds; say so instead of "out of range".
_EPOCH_MS_HINT = 1e11

_T = TypeVar("_T")


class _RowError(Exception):
    """One row cannot be used; the message is the reject reason."""


@dataclass(frozen=True, slots=True)
class _RawRow:
    """One row as split from its file, before its values are parsed.

    ``raw`` is the row's text; ``None`` means "JSON-dump ``values`` if it is refused" (Parquet
    rows have no text, and dumping every row up front would be wasted work). ``error`` is set
    when the row could not even be split into fields.
    """

    line: int
    raw: str | None
    values: Mapping[str, object] | None
    error: str | None = None


class _Quarantine:
    """Collects rejects for one file, or raises on the first one in strict mode."""

    def __init__(self, *, kind: str, strict: bool, row_label: str) -> None:
        self.kind = kind
        self.strict = strict
        # Parquet has rows, not lines: the reason says which one is meant.
        self.row_label = row_label
        self.rejects: list[Reject] = []

    def refuse(self, source: SourceRef, reason: str, row: _RawRow) -> None:
        if self.row_label:
            reason = f"{reason} ({self.row_label} {source.line})"
        if self.strict:
            raise CatalogError(
                f"{source}: {reason}. Fix or remove this {self.kind} row, or drop --strict "
                "(strict=False) to quarantine bad rows and carry on."
            )
        raw = row.raw if row.raw is not None else _dump(row.values)
        self.rejects.append(Reject(source=source, reason=reason, raw=raw, kind=self.kind))

    def parse(
        self,
        path: Path,
        rows: Iterable[_RawRow],
        parse: Callable[[Mapping[str, object]], _T],
    ) -> Iterator[tuple[SourceRef, _RawRow, _T]]:
        """Yield ``(source, row, parsed)`` for every good row; refuse the others."""
        where = str(path)
        for row in rows:
            source = SourceRef(where, row.line)
            if row.values is None:
                self.refuse(source, row.error or "unreadable row", row)
                continue
            try:
                parsed = parse(row.values)
            except _RowError as exc:
                self.refuse(source, str(exc), row)
                continue
            yield source, row, parsed


# --------------------------------------------------------------------------- public API


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
    path = _absolute(path)
    fmt = _format_of(path)
    base_dir = path.parent
    quarantine = _Quarantine(
        kind="product", strict=strict, row_label="row" if fmt == "parquet" else ""
    )
    products: list[Product] = []
    provenance: dict[str, SourceRef] = {}
    rows = _iter_rows(path, fmt, required=("product_id",))
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
    path = _absolute(path)
    fmt = _format_of(path)
    quarantine = _Quarantine(
        kind="interaction", strict=strict, row_label="row" if fmt == "parquet" else ""
    )
    rows = _iter_rows(path, fmt, required=INTERACTION_COLUMNS)
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
    path = _absolute(path)
    if path.is_file():
        return read_products(path, strict=strict)
    if not path.is_dir():
        raise CatalogError(f"catalogue path {path} does not exist; pass a folder or a file.")
    # Imported here, not at the top: hm builds on this module's row helpers, so a top-level
    # import would be circular.
    from newarrivals.indexer.catalog.hm import (
        ARTICLES_FILE,
        TRANSACTIONS_FILE,
        is_hm_layout,
        read_hm,
    )

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
    base = Path(os.path.normpath(_absolute(out_dir)))
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


# --------------------------------------------------------------------------- row sources


def _absolute(path: Path) -> Path:
    # Paths end up in provenance and reject files read later, perhaps from another folder.
    return path if path.is_absolute() else Path.cwd() / path


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


def _iter_rows(path: Path, fmt: str, *, required: Sequence[str]) -> Iterator[_RawRow]:
    if not path.is_file():
        raise CatalogError(f"{path} does not exist or is not a file.")
    if fmt == "jsonl":
        return _iter_jsonl(path)
    if fmt == "csv":
        return _iter_csv(path, required=required)
    return _iter_parquet(path, required=required)


def _iter_jsonl(path: Path) -> Iterator[_RawRow]:
    with path.open(encoding="utf-8-sig") as handle:
        seen_content = False
        for number, text in enumerate(handle, start=1):
            raw = text.rstrip("\r\n")
            if not raw.strip():
                continue
            if not seen_content and raw.lstrip().startswith("["):
                raise CatalogError(
                    f"{path}:{number} starts a JSON array; write JSON Lines instead (one "
                    "object per line, e.g. jq -c '.[]' in.json > out.jsonl)."
                )
            seen_content = True
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield _RawRow(number, raw, None, f"malformed JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(value, dict):
                yield _RawRow(number, raw, None, f"expected a JSON object, got {_describe(value)}")
                continue
            yield _RawRow(number, raw, value)


class _LineTap:
    """Feeds a file's lines to ``csv.reader`` and remembers which lines each record used.

    A quoted CSV cell may span lines, so counting records would give wrong line numbers;
    counting the physical lines the reader pulled gives the right ones, and their text is
    the raw row to quarantine.
    """

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self._pending: list[str] = []
        self._consumed = 0

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self._pending.append(line)
        self._consumed += 1
        return line

    def take(self) -> tuple[int, str]:
        """The first line number and the text of the lines read since the last call."""
        first = self._consumed - len(self._pending) + 1
        text = "".join(self._pending).rstrip("\r\n")
        self._pending.clear()
        return first, text


def _iter_csv(path: Path, *, required: Sequence[str]) -> Iterator[_RawRow]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        tap = _LineTap(handle)
        reader = csv.reader(tap)
        try:
            header = next(reader, None)
            if header is None:
                raise CatalogError(
                    f"{path} is empty; expected a header row naming at least {', '.join(required)}."
                )
            columns = [name.strip() for name in header]
            _check_columns(path, columns, required)
            tap.take()
            for fields in reader:
                line, raw = tap.take()
                if not fields:
                    continue
                if len(fields) != len(columns):
                    yield _RawRow(
                        line,
                        raw,
                        None,
                        f"expected {len(columns)} fields as in the header, got {len(fields)}",
                    )
                    continue
                yield _RawRow(line, raw, dict(zip(columns, fields, strict=True)))
        except csv.Error as exc:
            line, _ = tap.take()
            raise CatalogError(
                f"{path}:{line}: the CSV cannot be parsed ({exc}); check the quoting there."
            ) from exc


def _iter_parquet(path: Path, *, required: Sequence[str]) -> Iterator[_RawRow]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise CatalogError(f"cannot read Parquet file {path}: {exc}") from exc
    _check_columns(path, table.column_names, required)
    for name in ("product_id", "user_id"):
        if name in table.column_names:
            kind = table.schema.field(name).type
            if pa.types.is_dictionary(kind):
                kind = kind.value_type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise CatalogError(
                    f"{path}: column {name} has type {kind}; ids must be strings (a number "
                    "loses leading zeros). Cast the column to string when writing the file."
                )
    for index, values in enumerate(table.to_pylist(), start=1):
        yield _RawRow(index, None, values)


def _check_columns(path: Path, columns: Sequence[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in columns]
    if missing:
        raise CatalogError(
            f"{path} has no {', '.join(missing)} column (columns: {', '.join(columns)}); "
            f"add it or rename the matching column."
        )


# --------------------------------------------------------------------------- value parsing


def _parse_product(values: Mapping[str, object], base_dir: str) -> Product:
    attributes = _parse_attributes(values.get("attributes"))
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
        product_id=_parse_id(values, "product_id"),
        title=_parse_text(values, "title"),
        description=_parse_text(values, "description"),
        category=_parse_category(values.get("category")),
        brand=_parse_text(values, "brand"),
        price=_parse_price(values.get("price")),
        attributes=attributes,
        image=_parse_image(values.get("image"), base_dir),
        launched_at=_parse_optional_timestamp(values.get("launched_at"), "launched_at"),
        available=_parse_bool(values.get("available"), "available", default=True),
        text_source=_parse_text_source(values.get("text_source")),
    )


def _parse_interaction(values: Mapping[str, object]) -> Interaction:
    timestamp = values.get("timestamp")
    if timestamp is None or timestamp == "":
        raise _RowError("missing timestamp (every interaction needs one)")
    return Interaction(
        user_id=_parse_id(values, "user_id"),
        product_id=_parse_id(values, "product_id"),
        event=_parse_event(values.get("event")),
        timestamp=_parse_timestamp(timestamp, "timestamp"),
    )


def _describe(value: object) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _dump(values: Mapping[str, object] | None) -> str:
    return json.dumps(values, ensure_ascii=False, default=str)


def _parse_id(values: Mapping[str, object], name: str) -> str:
    value = values.get(name)
    if value is None:
        raise _RowError(f"missing {name} (every row needs a non-empty {name})")
    if not isinstance(value, str):
        raise _RowError(
            f"{name} must be a string, got {_describe(value)} (quote ids: a number loses "
            "leading zeros)"
        )
    value = value.strip()
    if not value:
        raise _RowError(f"empty {name} (every row needs a non-empty {name})")
    return value


def _parse_text(values: Mapping[str, object], name: str) -> str:
    value = values.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _RowError(f"{name} must be a string, got {_describe(value)}")
    return value


def _parse_category(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    parts: object = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parts = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _RowError(
                    f"category {_short(value)} is not a valid JSON array ({exc.msg}); use "
                    "'A > B > C' or a JSON list of strings"
                ) from exc
        elif ">" in text:
            parts = text.split(">")
        elif "/" in text:
            parts = text.split("/")
        else:
            parts = [text]
    if not isinstance(parts, list | tuple) or not all(isinstance(p, str) for p in parts):
        raise _RowError(
            f"category must be 'A > B > C' or a list of strings, got {_describe(value)}"
        )
    return tuple(stripped for part in parts if (stripped := part.strip()))


def _parse_price(value: object) -> float | None:
    if value is None or value == "":
        return None
    expected = "(expected a non-negative number)"
    if isinstance(value, bool):
        raise _RowError(f"unparsable price {value!r} {expected}")
    if isinstance(value, int | float):
        price = float(value)
    elif isinstance(value, str):
        try:
            price = float(value.strip())
        except ValueError:
            raise _RowError(f"unparsable price {_short(value)} {expected}") from None
    else:
        raise _RowError(f"unparsable price {_describe(value)} {expected}")
    if math.isnan(price) and not isinstance(value, str):
        # Parquet and pandas write a missing float as NaN.
        return None
    if not math.isfinite(price):
        raise _RowError(f"unparsable price {_short(value)} {expected}")
    if price < 0:
        raise _RowError(f"negative price {_short(value)} {expected}")
    return price


def _parse_attributes(value: object) -> dict[str, str]:
    if value is None or value == "":
        return {}
    parsed: object = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
    elif isinstance(value, list) and all(
        isinstance(item, tuple) and len(item) == 2 for item in value
    ):
        # A Parquet map column arrives as a list of (key, value) pairs.
        parsed = dict(value)
    if not isinstance(parsed, dict) or not all(isinstance(key, str) for key in parsed):
        raise _RowError(
            f"attributes {_short(value)} is not a JSON object (expected e.g. "
            '\'{"colour": "red"}\')'
        )
    return {
        key: item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
        for key, item in parsed.items()
        if item is not None
    }


def _parse_image(value: object, base_dir: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _RowError(f"image must be a path string, got {_describe(value)}")
    text = value.strip()
    if not text:
        return None
    # urlparse and Path objects cost more than the rest of a row; most images are plain paths.
    parsed = urlparse(text) if ":" in text else None
    if parsed is not None and parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise _RowError(
                f"image {_short(text)} names another host; use a local path or file:///path"
            )
        text = url2pathname(parsed.path)
    elif parsed is not None and len(parsed.scheme) > 1:
        # One letter is a Windows drive ("C:\\..."), not a scheme.
        raise _RowError(
            f"image {_short(text)} is a {parsed.scheme} URL; download the images and give "
            "local paths (relative to this file) or file:// URIs"
        )
    return os.path.normpath(os.path.join(base_dir, text))  # noqa: PTH118 - see above


def _parse_optional_timestamp(value: object, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    return _parse_timestamp(value, name)


def _parse_timestamp(value: object, name: str) -> datetime:
    expected = "(expected an ISO-8601 date or datetime, or epoch seconds)"
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            try:
                moment = _from_epoch(float(text), value, name, expected)
            except ValueError:
                raise _RowError(f"unparsable {name} {_short(value)} {expected}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = _from_epoch(float(value), value, name, expected)
    else:
        raise _RowError(f"unparsable {name} {_describe(value)} {expected}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _from_epoch(seconds: float, value: object, name: str, expected: str) -> datetime:
    if not math.isfinite(seconds):
        raise _RowError(f"unparsable {name} {_short(value)} {expected}")
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        hint = "; it looks like milliseconds, divide by 1000" if seconds > _EPOCH_MS_HINT else ""
        raise _RowError(f"{name} {_short(value)} is out of range {expected}{hint}") from None


def _parse_bool(value: object, name: str, *, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _RowError(f"unparsable {name} {_short(value)} (expected true/false, 1/0 or yes/no)")


def _parse_text_source(value: object) -> TextSource:
    if value is None or value == "":
        return TextSource.OWN
    if isinstance(value, str):
        try:
            return TextSource(value.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(source.value for source in TextSource)
    raise _RowError(f"unknown text_source {_short(value)} (expected one of {choices})")


def _parse_event(value: object) -> EventType:
    if value is None or value == "":
        raise _RowError("missing event (every interaction needs one)")
    if isinstance(value, str):
        event = _EVENT_ALIASES.get(value.strip().lower())
        if event is not None:
            return event
    choices = ", ".join(_EVENT_ALIASES)
    raise _RowError(f"unknown event {_short(value)} (expected one of {choices})")


# --------------------------------------------------------------------------- writing


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
    return text if _parse_category(text) == tuple(category) else category


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
