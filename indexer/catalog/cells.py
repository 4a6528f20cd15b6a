"""Parse one cell of a catalogue row into its typed value.

Each parser takes the cell as the file gave it (CSV text, or a JSON / Parquet value) and
returns the value the schema stores, or raises
:class:`~newarrivals.indexer.catalog.rows.RowError` with the reason the row is refused. The
rules are those listed in :mod:`newarrivals.indexer.catalog.readers`; the H&M reader shares
the price and timestamp parsers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, date, datetime
from urllib.parse import urlparse
from urllib.request import url2pathname

from newarrivals.indexer.catalog.rows import RowError, describe, shorten
from newarrivals.indexer.catalog.schema import EventType, TextSource

__all__ = [
    "parse_attributes",
    "parse_bool",
    "parse_category",
    "parse_event",
    "parse_id",
    "parse_image",
    "parse_optional_timestamp",
    "parse_price",
    "parse_text",
    "parse_text_source",
    "parse_timestamp",
]

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


def parse_id(values: Mapping[str, object], name: str) -> str:
    """The stripped, non-empty string id in column ``name``."""
    value = values.get(name)
    if value is None:
        raise RowError(f"missing {name} (every row needs a non-empty {name})")
    if not isinstance(value, str):
        raise RowError(
            f"{name} must be a string, got {describe(value)} (quote ids: a number loses "
            "leading zeros)"
        )
    value = value.strip()
    if not value:
        raise RowError(f"empty {name} (every row needs a non-empty {name})")
    return value


def parse_text(values: Mapping[str, object], name: str) -> str:
    """The text in column ``name``; an absent cell is ``""``."""
    value = values.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f"{name} must be a string, got {describe(value)}")
    return value


def parse_category(value: object) -> tuple[str, ...]:
    """A category path from ``"A > B"``, ``"A/B"`` or a list of strings."""
    if value is None:
        return ()
    parts: object = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parts = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RowError(
                    f"category {shorten(value)} is not a valid JSON array ({exc.msg}); use "
                    "'A > B > C' or a JSON list of strings"
                ) from exc
        elif ">" in text:
            parts = text.split(">")
        elif "/" in text:
            parts = text.split("/")
        else:
            parts = [text]
    if not isinstance(parts, list | tuple) or not all(isinstance(p, str) for p in parts):
        raise RowError(f"category must be 'A > B > C' or a list of strings, got {describe(value)}")
    return tuple(stripped for part in parts if (stripped := part.strip()))


def parse_price(value: object) -> float | None:
    """A finite, non-negative price; empty (or a NaN from Parquet) is ``None``."""
    if value is None or value == "":
        return None
    expected = "(expected a non-negative number)"
    if isinstance(value, bool):
        raise RowError(f"unparsable price {value!r} {expected}")
    if isinstance(value, int | float):
        price = float(value)
    elif isinstance(value, str):
        try:
            price = float(value.strip())
        except ValueError:
            raise RowError(f"unparsable price {shorten(value)} {expected}") from None
    else:
        raise RowError(f"unparsable price {describe(value)} {expected}")
    if math.isnan(price) and not isinstance(value, str):
        # Parquet and pandas write a missing float as NaN.
        return None
    if not math.isfinite(price):
        raise RowError(f"unparsable price {shorten(value)} {expected}")
    if price < 0:
        raise RowError(f"negative price {shorten(value)} {expected}")
    return price


def parse_attributes(value: object) -> dict[str, str]:
    """A JSON object (or Parquet map) as a dict of strings; nulls are dropped."""
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
        raise RowError(
            f"attributes {shorten(value)} is not a JSON object (expected e.g. "
            '\'{"colour": "red"}\')'
        )
    return {
        key: item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
        for key, item in parsed.items()
        if item is not None
    }


def parse_image(value: object, base_dir: str) -> str | None:
    """A local image path made absolute against ``base_dir``; URLs are refused."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"image must be a path string, got {describe(value)}")
    text = value.strip()
    if not text:
        return None
    # urlparse and Path objects cost more than the rest of a row; most images are plain paths.
    parsed = urlparse(text) if ":" in text else None
    if parsed is not None and parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise RowError(
                f"image {shorten(text)} names another host; use a local path or file:///path"
            )
        text = url2pathname(parsed.path)
    elif parsed is not None and len(parsed.scheme) > 1:
        # One letter is a Windows drive ("C:\\..."), not a scheme.
        raise RowError(
            f"image {shorten(text)} is a {parsed.scheme} URL; download the images and give "
            "local paths (relative to this file) or file:// URIs"
        )
    return os.path.normpath(os.path.join(base_dir, text))  # noqa: PTH118 - see above


def parse_optional_timestamp(value: object, name: str) -> datetime | None:
    """As :func:`parse_timestamp`, but an empty cell is ``None``."""
    if value is None or value == "":
        return None
    return parse_timestamp(value, name)


def parse_timestamp(value: object, name: str) -> datetime:
    """An ISO-8601 date/datetime or epoch seconds as an aware UTC datetime."""
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
                raise RowError(f"unparsable {name} {shorten(value)} {expected}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = _from_epoch(float(value), value, name, expected)
    else:
        raise RowError(f"unparsable {name} {describe(value)} {expected}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _from_epoch(seconds: float, value: object, name: str, expected: str) -> datetime:
    if not math.isfinite(seconds):
        raise RowError(f"unparsable {name} {shorten(value)} {expected}")
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        hint = "; it looks like milliseconds, divide by 1000" if seconds > _EPOCH_MS_HINT else ""
        raise RowError(f"{name} {shorten(value)} is out of range {expected}{hint}") from None


def parse_bool(value: object, name: str, *, default: bool) -> bool:
    """``true/false``, ``1/0`` or ``yes/no`` (any case); empty is ``default``."""
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
    raise RowError(f"unparsable {name} {shorten(value)} (expected true/false, 1/0 or yes/no)")


def parse_text_source(value: object) -> TextSource:
    """A :class:`TextSource` by value; empty is ``TextSource.OWN``."""
    if value is None or value == "":
        return TextSource.OWN
    if isinstance(value, str):
        try:
            return TextSource(value.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(source.value for source in TextSource)
    raise RowError(f"unknown text_source {shorten(value)} (expected one of {choices})")


def parse_event(value: object) -> EventType:
    """An :class:`EventType` by value or alias (``add_to_cart``, ``buy``...)."""
    if value is None or value == "":
        raise RowError("missing event (every interaction needs one)")
    if isinstance(value, str):
        event = _EVENT_ALIASES.get(value.strip().lower())
        if event is not None:
            return event
    choices = ", ".join(_EVENT_ALIASES)
    raise RowError(f"unknown event {shorten(value)} (expected one of {choices})")
