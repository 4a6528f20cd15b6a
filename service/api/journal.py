"""The write journal: every accepted write, durably, in an embedded SQLite database.

Each event, product upsert and product delete is appended here *before* the service
answers, in one transaction per request, with ``journal_mode=WAL`` and
``synchronous=FULL`` (the commit is on disk when it returns). On start-up and after a hot
swap the journal is replayed in sequence order on top of the loaded index version; replay
is idempotent per entry kind (an upsert overwrites, a delete deletes, events fold into a
user built from scratch for that state).

Sequence numbers come from ``AUTOINCREMENT``, so they are never reused, even after an
erasure deleted the newest rows.

Right to erasure (:meth:`Journal.erase_user`) deletes the user's rows and records a
*pseudonymous* key (HMAC-SHA256 of the user id under a random per-journal salt) so the
user's interactions in the base catalogue stay erased after a restart or a reload. The
database runs with ``secure_delete=ON`` (freed pages are zeroed) and the WAL is
checkpointed and truncated after an erasure, so the deleted rows do not linger in the file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from newarrivals.indexer.catalog.schema import EventType, Interaction, Product
from newarrivals.indexer.errors import NewArrivalsError

__all__ = ["Journal", "JournalEntry", "JournalError", "product_from_payload", "product_payload"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1

EntryKind = Literal["event", "upsert", "delete"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('event', 'upsert', 'delete')),
    user_id TEXT,
    product_id TEXT,
    payload TEXT NOT NULL,
    vector BLOB,
    photo BLOB,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_user ON journal (user_id) WHERE user_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS erasures (
    user_key TEXT PRIMARY KEY,
    erased_at TEXT NOT NULL,
    after_seq INTEGER NOT NULL
);
"""


class JournalError(NewArrivalsError):
    """The journal file cannot be opened or has an unknown layout."""


@dataclass(frozen=True)
class JournalEntry:
    """One journaled write.

    Attributes:
        seq: Position in the journal (increasing, never reused).
        kind: ``event``, ``upsert`` or ``delete``.
        user_id: The event's user (events only).
        product_id: The product concerned.
        payload: The event or the product record (JSON).
        vector: The upserted product's fused vector (float32 bytes), if any.
        photo: The upserted product's photo bytes, if any (to re-encode after a swap to a
            version with other encoders).
    """

    seq: int
    kind: EntryKind
    user_id: str | None
    product_id: str | None
    payload: dict[str, Any]
    vector: bytes | None
    photo: bytes | None

    def interaction(self) -> Interaction:
        """The event of an ``event`` entry."""
        p = self.payload
        return Interaction(
            user_id=str(p["user_id"]),
            product_id=str(p["product_id"]),
            event=EventType(p["event"]),
            timestamp=datetime.fromisoformat(str(p["timestamp"])),
        )

    def vector_array(self) -> np.ndarray | None:
        if self.vector is None:
            return None
        out: np.ndarray = np.frombuffer(self.vector, dtype=np.float32).copy()
        return out


def product_payload(product: Product) -> dict[str, Any]:
    """A product as journal JSON (category kept as a list; the photo travels separately)."""
    return {
        "product_id": product.product_id,
        "title": product.title,
        "description": product.description,
        "category": list(product.category),
        "brand": product.brand,
        "price": product.price,
        "attributes": dict(product.attributes),
        "launched_at": product.launched_at.isoformat() if product.launched_at else None,
        "available": product.available,
    }


def product_from_payload(payload: dict[str, Any]) -> Product:
    launched = payload.get("launched_at")
    return Product(
        product_id=str(payload["product_id"]),
        title=str(payload.get("title", "")),
        description=str(payload.get("description", "")),
        category=tuple(str(c) for c in payload.get("category", ())),
        brand=str(payload.get("brand", "")),
        price=None if payload.get("price") is None else float(payload["price"]),
        attributes={str(k): str(v) for k, v in dict(payload.get("attributes", {})).items()},
        launched_at=None if launched is None else datetime.fromisoformat(str(launched)),
        available=bool(payload.get("available", True)),
    )


class Journal:
    """An append-only log of writes in SQLite (WAL, synchronous=FULL).

    Writers share one connection behind a lock; :meth:`entries` opens its own connection,
    so a replay (during a hot swap) reads while requests keep appending.

    Example:
        >>> journal = Journal(Path("/tmp/journal.sqlite"))  # doctest: +SKIP
        >>> seq = journal.append_events([event])  # doctest: +SKIP
        >>> [e.seq for e in journal.entries()]  # doctest: +SKIP
        [1]
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            with self._conn:
                self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(
                f"cannot open the journal {self.path}: {exc}; set NEWARRIVALS_JOURNAL (or "
                "--journal) to a writable path."
            ) from exc
        self._lock = threading.Lock()
        self._salt = self._meta("user_key_salt", lambda: secrets.token_hex(32))
        version = int(self._meta("schema_version", lambda: str(SCHEMA_VERSION)))
        if version != SCHEMA_VERSION:
            raise JournalError(
                f"{self.path} has journal schema {version}, this code reads {SCHEMA_VERSION}; "
                "point NEWARRIVALS_JOURNAL at a new file."
            )

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    def _meta(self, key: str, default: Any) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return str(row[0])
        value = str(default())
        self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writing ----------------------------------------------------------------------

    def _append(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert rows in one durable transaction; returns the last sequence number."""
        now = datetime.now(UTC).isoformat()
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    cur.execute(
                        "INSERT INTO journal (kind, user_id, product_id, payload, vector, "
                        "photo, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (*row, now),
                    )
                last = int(cur.lastrowid or 0)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return last

    def append_events(self, events: Sequence[Interaction]) -> int:
        """Journal events (one transaction); returns the last sequence number."""
        return self._append(
            [
                (
                    "event",
                    e.user_id,
                    e.product_id,
                    json.dumps(e.to_record()),
                    None,
                    None,
                )
                for e in events
            ]
        )

    def append_upsert(
        self,
        product: Product,
        vector: np.ndarray,
        signature: dict[str, Any],
        photo: bytes | None,
    ) -> int:
        """Journal a product upsert with its vector and the encoders that made it."""
        payload = {"product": product_payload(product), "signature": signature}
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        return self._append(
            [("upsert", None, product.product_id, json.dumps(payload), blob, photo)]
        )

    def append_delete(self, product_id: str) -> int:
        return self._append(
            [("delete", None, product_id, json.dumps({"product_id": product_id}), None, None)]
        )

    def user_key(self, user_id: str) -> str:
        """The pseudonymous key an erasure is recorded under."""
        return hmac.new(self._salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()

    def erase_user(self, user_id: str) -> int:
        """Delete the user's journaled events and record the erasure, durably.

        Returns:
            How many journal rows were deleted.
        """
        key = self.user_key(user_id)
        now = datetime.now(UTC).isoformat()
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                deleted = cur.execute("DELETE FROM journal WHERE user_id = ?", (user_id,)).rowcount
                last = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'")
                row = last.fetchone()
                cur.execute(
                    "INSERT OR REPLACE INTO erasures (user_key, erased_at, after_seq) "
                    "VALUES (?, ?, ?)",
                    (key, now, int(row[0]) if row else 0),
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            # Copy the WAL into the database (where secure_delete zeroes the freed rows)
            # and truncate it, so the erased rows are not left in the WAL file.
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                logger.warning(
                    "journal checkpoint after an erasure was blocked by a reader; the WAL "
                    "is truncated at the next checkpoint"
                )
        return int(deleted)

    # -- reading ----------------------------------------------------------------------

    def erased_user_keys(self) -> frozenset[str]:
        with self._lock:
            rows = self._conn.execute("SELECT user_key FROM erasures").fetchall()
        return frozenset(str(r[0]) for r in rows)

    def last_seq(self) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'journal'"
            ).fetchone()
        return int(row[0]) if row else 0

    def count(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM journal").fetchone()
        return int(row[0])

    def entries(
        self, *, after: int = 0, upto: int | None = None, user_id: str | None = None
    ) -> Iterator[JournalEntry]:
        """Entries with ``after < seq <= upto`` in sequence order (optionally one user's).

        Reads through its own connection and one snapshot, so writers are not blocked.
        """
        sql = "SELECT seq, kind, user_id, product_id, payload, vector, photo FROM journal "
        sql += "WHERE seq > ?"
        args: list[Any] = [after]
        if upto is not None:
            sql += " AND seq <= ?"
            args.append(upto)
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        sql += " ORDER BY seq"
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30.0)
        try:
            conn.execute("BEGIN")
            for seq, kind, uid, pid, payload, vector, photo in conn.execute(sql, args):
                yield JournalEntry(
                    seq=int(seq),
                    kind=kind,
                    user_id=uid,
                    product_id=pid,
                    payload=json.loads(payload),
                    vector=vector,
                    photo=photo,
                )
            conn.execute("COMMIT")
        finally:
            conn.close()
