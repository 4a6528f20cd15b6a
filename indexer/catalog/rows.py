"""Split catalogue files into rows and quarantine the rows that cannot be used.

A :class:`RawRow` is one row as split from its file (JSON Lines, CSV or Parquet), before its
values are parsed; a :class:`Quarantine` turns the rows a parser refuses (by raising
:class:`RowError`) into :class:`~newarrivals.indexer.catalog.schema.Reject` records, or
raises on the first one in strict mode. The generic readers
(:mod:`newarrivals.indexer.catalog.readers`) and the H&M reader
(:mod:`newarrivals.indexer.catalog.hm`) both build on these; the cell parsers they share are
in :mod:`newarrivals.indexer.catalog.cells`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from newarrivals.indexer.catalog.schema import Reject, SourceRef
from newarrivals.indexer.errors import CatalogError

__all__ = [
    "Quarantine",
    "RawRow",
    "RowError",
    "absolute_path",
    "describe",
    "iter_csv",
    "iter_rows",
    "shorten",
]

_T = TypeVar("_T")


class RowError(Exception):
    """One row cannot be used; the message is the reject reason."""


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row as split from its file, before its values are parsed.

    ``raw`` is the row's text; ``None`` means "JSON-dump ``values`` if it is refused" (Parquet
    rows have no text, and dumping every row up front would be wasted work). ``error`` is set
    when the row could not even be split into fields.
    """

    line: int
    raw: str | None
    values: Mapping[str, object] | None
    error: str | None = None


class Quarantine:
    """Collects rejects for one file, or raises on the first one in strict mode."""

    def __init__(self, *, kind: str, strict: bool, row_label: str) -> None:
        self.kind = kind
        self.strict = strict
        # Parquet has rows, not lines: the reason says which one is meant.
        self.row_label = row_label
        self.rejects: list[Reject] = []

    def refuse(self, source: SourceRef, reason: str, row: RawRow) -> None:
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
        rows: Iterable[RawRow],
        parse: Callable[[Mapping[str, object]], _T],
    ) -> Iterator[tuple[SourceRef, RawRow, _T]]:
        """Yield ``(source, row, parsed)`` for every good row; refuse the others."""
        where = str(path)
        for row in rows:
            source = SourceRef(where, row.line)
            if row.values is None:
                self.refuse(source, row.error or "unreadable row", row)
                continue
            try:
                parsed = parse(row.values)
            except RowError as exc:
                self.refuse(source, str(exc), row)
                continue
            yield source, row, parsed

    def keep_first(
        self,
        path: Path,
        rows: Iterable[RawRow],
        parse: Callable[[Mapping[str, object]], _T],
        *,
        key: Callable[[_T], str],
        name: str,
    ) -> Iterator[tuple[SourceRef, _T]]:
        """As :meth:`parse`, but a row whose ``key`` an earlier row had is refused.

        The first row of a key is kept: the ``name`` of the key and both places are in the
        reason, so the author can see which row won.
        """
        seen: dict[str, SourceRef] = {}
        for source, row, parsed in self.parse(path, rows, parse):
            value = key(parsed)
            first = seen.get(value)
            if first is not None:
                self.refuse(
                    source,
                    f"duplicate {name} {value!r} (first seen at {first}; the first row is kept)",
                    row,
                )
                continue
            seen[value] = source
            yield source, parsed


def absolute_path(path: Path) -> Path:
    """The path made absolute against the working folder."""
    # Paths end up in provenance and reject files read later, perhaps from another folder.
    return path if path.is_absolute() else Path.cwd() / path


def iter_rows(path: Path, fmt: str, *, required: Sequence[str]) -> Iterator[RawRow]:
    """The rows of a ``jsonl``, ``csv`` or ``parquet`` file (CatalogError if it is missing)."""
    if not path.is_file():
        raise CatalogError(f"{path} does not exist or is not a file.")
    if fmt == "jsonl":
        return _iter_jsonl(path)
    if fmt == "csv":
        return iter_csv(path, required=required)
    return _iter_parquet(path, required=required)


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
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
                yield RawRow(number, raw, None, f"malformed JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(value, dict):
                yield RawRow(number, raw, None, f"expected a JSON object, got {describe(value)}")
                continue
            yield RawRow(number, raw, value)


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


def iter_csv(path: Path, *, required: Sequence[str]) -> Iterator[RawRow]:
    """The rows of a CSV file, keyed by its header; the header must name ``required``."""
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
                    yield RawRow(
                        line,
                        raw,
                        None,
                        f"expected {len(columns)} fields as in the header, got {len(fields)}",
                    )
                    continue
                yield RawRow(line, raw, dict(zip(columns, fields, strict=True)))
        except csv.Error as exc:
            line, _ = tap.take()
            raise CatalogError(
                f"{path}:{line}: the CSV cannot be parsed ({exc}); check the quoting there."
            ) from exc


def _iter_parquet(path: Path, *, required: Sequence[str]) -> Iterator[RawRow]:
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
        yield RawRow(index, None, values)


def _check_columns(path: Path, columns: Sequence[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in columns]
    if missing:
        raise CatalogError(
            f"{path} has no {', '.join(missing)} column (columns: {', '.join(columns)}); "
            f"add it or rename the matching column."
        )


def describe(value: object) -> str:
    """A value's type and a shortened repr, for reject reasons."""
    return f"{type(value).__name__} {shorten(value)}"


def shorten(value: object, limit: int = 80) -> str:
    """A value's repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _dump(values: Mapping[str, object] | None) -> str:
    return json.dumps(values, ensure_ascii=False, default=str)
