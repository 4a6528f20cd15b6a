"""The product-level index: string product ids, filterable metadata, vectors and an ANN index.

:class:`ProductIndex` is what the rest of the system searches. It maps external string
ids to int64 ids (assigned incrementally, never reused, so a stale int id can never point
at a different product), keeps a columnar metadata table for vectorised filtering, keeps
the float32 vectors (for user vectors and exact fallbacks), and delegates nearest-neighbour
search to a :class:`~newarrivals.indexer.index.ann.VectorIndex`.

Rows are kept in int-id order, so ``int_ids`` is sorted and an int id's row is found with
``np.searchsorted``. Live updates are cheap: the columns live in buffers with spare capacity
(an append copies only the new rows; a full buffer grows by a quarter, so appends are
amortised O(1)), and a removed product's row stays behind as a *dead* row, masked out of
every search, until dead rows are a quarter of all rows, when the columns are compacted
in one pass. An upsert into a 100,000-product index therefore never copies the 100,000
vectors (the ANN backend's own cost of a removal is described in :mod:`.ann`).

On-disk layout inside one directory (the caller versions and publishes the directory):

================  ===============================================================
``index.faiss``   the ANN index, CPU form (``faiss.write_index``)
``ids.json``      ``{"next_id", "int_ids", "product_ids"}`` in int-id order
``vectors.npy``   float32 ``(count, dim)``, rows in int-id order
``meta.npz``      columns: category vocabulary and codes, price (NaN = none),
                  launched_at (epoch microseconds, int64 min = none), available
``ann.json``      ``{"format", "config", "dim", "count", "faiss_version"}``
================  ===============================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import faiss
import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import BoolArray, F32Array, I64Array
from newarrivals.indexer.catalog.schema import CATEGORY_SEPARATOR, Product
from newarrivals.indexer.errors import (
    CatalogError,
    ConfigError,
    IndexIntegrityError,
    UnknownProductError,
)
from newarrivals.indexer.index.ann import AnnConfig, VectorIndex, make_index
from newarrivals.indexer.index.filters import (
    Candidate,
    SearchFilter,
    epoch_microseconds,
    normalise_category,
)
from newarrivals.indexer.index.store_files import StoreColumns, read_store, write_store

__all__ = ["ProductIndex"]

logger = logging.getLogger(__name__)


#: launched_at sentinel for "unknown"; it fails every launched_after comparison.
NO_LAUNCH: Final = int(np.iinfo(np.int64).min)

#: Rebuild an HNSW index from the stored vectors once this share of it is tombstones.
COMPACT_TOMBSTONE_SHARE: Final = 0.25

#: Post-filter (search unfiltered, drop refused products) when at least this share of the
#: index passes the filter, fetching ``want / share`` times this many candidates.
_POST_FILTER_SHARE: Final = 0.5
_POST_FILTER_OVERFETCH: Final = 1.5

#: Rows per block in exact search: bounds the (queries x rows) score matrix.
_EXACT_BLOCK: Final = 65_536

#: A full column buffer grows by this share of its rows (at least ``_MIN_SPARE`` rows).
_GROWTH: Final = 0.25
_MIN_SPARE: Final = 64

#: The per-row columns, kept in buffers with spare capacity (see the module docstring).
_COLUMNS: Final = (
    "_int_ids",
    "_pids",
    "_vectors",
    "_category_code",
    "_price",
    "_launched_us",
    "_available",
    "_alive",
)


class ProductIndex:
    """Products, their vectors and metadata, searchable with filters.

    Build it with :meth:`build` or :meth:`load`; the constructor is internal.

    Filtered search still returns ``k`` results when at least ``k`` products pass: the
    allowed ids go to the ANN backend as an ``IDSelector``; when the allowed set is small
    (fewer than ``exact_below`` products or ``exact_fraction`` of the index) the search
    is exact over those products' stored vectors instead (faster than steering a graph or
    inverted lists through a mostly-forbidden index, and exact); and any query for which
    the approximate backend returns fewer than ``min(k, allowed)`` results is redone
    exactly over the allowed subset.

    Not thread-safe for mutation: exclude searches while mutating (a read-write lock, as
    the HTTP service does), or mutate a copy and swap. Concurrent searches are safe.

    Example:
        >>> import numpy as np
        >>> from newarrivals.indexer import Product
        >>> products = [Product("a", category=("Women", "Tops"), price=20.0),
        ...             Product("b", category=("Men", "Shoes"), price=90.0),
        ...             Product("c", category=("Women", "Tops", "T-shirt"), price=15.0)]
        >>> vectors = np.eye(3, 4, dtype=np.float32)
        >>> index = ProductIndex.build(products, vectors, AnnConfig(factory="Flat"))
        >>> hits = index.search(vectors[1], k=2, filter=SearchFilter(category="women"))
        >>> [c.product_id for c in hits[0]]
        ['a', 'c']
        >>> index.remove(["a"]), len(index), "a" in index
        (1, 2, False)
    """

    def __init__(
        self,
        *,
        config: AnnConfig,
        index: VectorIndex,
        int_ids: I64Array,
        product_ids: Sequence[str],
        vectors: F32Array,
        category_vocab: Sequence[str],
        category_code: npt.NDArray[np.int32],
        price: npt.NDArray[np.float64],
        launched_us: I64Array,
        available: BoolArray,
        next_id: int,
        exact_below: int = 10_000,
        exact_fraction: float = 0.05,
    ) -> None:
        if exact_below < 0 or not 0.0 <= exact_fraction <= 1.0:
            raise ConfigError(
                f"exact_below must be >= 0 and exact_fraction in [0, 1], got "
                f"{exact_below} and {exact_fraction}."
            )
        self._config = config
        self._index = index
        self._int_ids = int_ids
        self._pids = np.asarray(list(product_ids), dtype=object)
        self._id_of: dict[str, int] = {
            pid: int(i) for pid, i in zip(product_ids, int_ids.tolist(), strict=True)
        }
        self._vectors = vectors
        self._vocab: list[str] = list(category_vocab)
        self._code_of: dict[str, int] = {c: i for i, c in enumerate(self._vocab)}
        self._category_code = category_code
        self._price = price
        self._launched_us = launched_us
        self._available = available
        # Dead rows (removed products) stay until compaction; see the module docstring.
        self._alive: BoolArray = np.ones(int(int_ids.size), dtype=bool)
        self._rows = int(int_ids.size)
        self._dead = 0
        self._buffers: dict[str, np.ndarray[Any, Any]] = {
            name: getattr(self, name) for name in _COLUMNS
        }
        self._next_id = next_id
        self.exact_below = exact_below
        self.exact_fraction = exact_fraction

    # -- construction ---------------------------------------------------------------

    @classmethod
    def build(
        cls,
        products: Sequence[Product],
        vectors: F32Array,
        config: AnnConfig,
        *,
        exact_below: int = 10_000,
        exact_fraction: float = 0.05,
    ) -> ProductIndex:
        """Index ``products`` with their vectors (row ``i`` belongs to ``products[i]``).

        Args:
            products: Products with unique ids.
            vectors: ``(len(products), dim)`` float32; L2-normalised here (on a copy).
            config: ANN backend settings.
            exact_below: Filtered searches allowing fewer products than this are exact.
            exact_fraction: ... or allowing less than this share of the index.

        Returns:
            A searchable index; int ids ``0 .. len(products) - 1`` in product order.
        """
        x = np.asarray(vectors)
        if x.ndim != 2:
            raise ValueError(f"vectors must be a 2-d (n, dim) array, got shape {x.shape}.")
        dim = int(x.shape[1])
        store = cls(
            config=config,
            index=make_index(config, dim),
            int_ids=np.empty(0, dtype=np.int64),
            product_ids=[],
            vectors=np.empty((0, dim), dtype=np.float32),
            category_vocab=[],
            category_code=np.empty(0, dtype=np.int32),
            price=np.empty(0, dtype=np.float64),
            launched_us=np.empty(0, dtype=np.int64),
            available=np.empty(0, dtype=bool),
            next_id=0,
            exact_below=exact_below,
            exact_fraction=exact_fraction,
        )
        unit = store._check_batch(products, x)
        ids = np.arange(len(products), dtype=np.int64)
        store._index.build(unit, ids)
        store._append(products, unit, ids)
        store._next_id = len(products)
        return store

    # -- basic accessors ------------------------------------------------------------

    @property
    def config(self) -> AnnConfig:
        return self._config

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    @property
    def ann(self) -> VectorIndex:
        """The ANN backend (read-only use)."""
        return self._index

    def __len__(self) -> int:
        return self._rows - self._dead

    def __contains__(self, product_id: object) -> bool:
        return isinstance(product_id, str) and product_id in self._id_of

    def product_ids(self) -> list[str]:
        """Live product ids in int-id (insertion) order."""
        pids = self._pids[self._alive] if self._dead else self._pids
        return [str(p) for p in pids.tolist()]

    def vector(self, product_id: str) -> F32Array:
        """A copy of one product's unit vector."""
        row: F32Array = self.vectors_for([product_id])[0]
        return row

    def vectors_for(self, product_ids: Sequence[str]) -> F32Array:
        """Copies of the unit vectors of ``product_ids``, ``(len(product_ids), dim)``."""
        rows = self._rows_of(product_ids)
        return self._vectors[rows].copy()

    # -- mutation -------------------------------------------------------------------

    def add(self, products: Sequence[Product], vectors: F32Array) -> None:
        """Upsert products: a known id is removed and re-added under a fresh int id.

        Args:
            products: Products with ids unique within the batch.
            vectors: ``(len(products), dim)`` float32, row ``i`` for ``products[i]``.
        """
        unit = self._check_batch(products, np.asarray(vectors))
        if not products:
            return
        existing = [p.product_id for p in products if p.product_id in self._id_of]
        if existing:
            self._remove_known(existing)
        ids = np.arange(self._next_id, self._next_id + len(products), dtype=np.int64)
        self._index.add(unit, ids)
        self._append(products, unit, ids)
        self._next_id += len(products)
        self._maybe_compact()

    def remove(self, product_ids: Iterable[str], *, missing_ok: bool = False) -> int:
        """Delist products: they never come back from search.

        Args:
            product_ids: Ids to remove.
            missing_ok: Ignore unknown ids instead of raising.

        Returns:
            How many products were removed.

        Raises:
            UnknownProductError: An id is unknown and ``missing_ok`` is False (nothing is
                removed then).
        """
        wanted = list(dict.fromkeys(product_ids))
        missing = [p for p in wanted if p not in self._id_of]
        if missing and not missing_ok:
            raise UnknownProductError(
                f"cannot remove {len(missing)} unknown product id(s): {_preview(missing)}; "
                f"pass missing_ok=True to ignore them."
            )
        known = [p for p in wanted if p in self._id_of]
        if not known:
            return 0
        removed = self._remove_known(known)
        self._maybe_compact()
        return removed

    def compact(self) -> None:
        """Drop dead rows and rebuild the ANN index from the stored vectors (drops HNSW
        tombstones)."""
        self._compact_rows()
        self._index.build(self._vectors, self._int_ids)

    # -- search ---------------------------------------------------------------------

    def search(
        self, queries: F32Array, k: int, filter: SearchFilter | None = None
    ) -> list[list[Candidate]]:
        """The best ``k`` products per query that pass ``filter``.

        Args:
            queries: ``(q, dim)`` or ``(dim,)`` float32 query vectors (normalise them for
                cosine scores; ranking does not depend on the query norm).
            k: Results per query.
            filter: Restrictions; ``None`` means ``SearchFilter()`` (available only).

        Returns:
            One list per query of ``min(k, products passing the filter)`` candidates,
            best first.
        """
        q = self._check_queries(queries)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        k = int(k)
        mask = self._mask(filter if filter is not None else SearchFilter())
        n = len(self)
        n_allowed = n if mask is None else int(np.count_nonzero(mask))
        if q.shape[0] == 0 or n_allowed == 0:
            return [[] for _ in range(q.shape[0])]
        want = min(k, n_allowed)
        if mask is not None and (
            n_allowed < self.exact_below or n_allowed < self.exact_fraction * n
        ):
            return self._candidates(*self._exact(q, np.flatnonzero(mask), want))
        if mask is not None and n_allowed >= _POST_FILTER_SHARE * n:
            found = self._post_filtered(q, want, mask, n_allowed / n)
            if found is not None:
                return found

        allowed_rows = None if mask is None else np.flatnonzero(mask)
        allowed_ids = None if allowed_rows is None else self._int_ids[allowed_rows]
        scores, ids = self._index.search(q, want, allowed=allowed_ids)
        rows = self._rows_of_int(ids)
        short = np.flatnonzero((rows >= 0).sum(axis=1) < want)
        if short.size:
            # Approximate backends can come back short under tight filters (an IVF's
            # probed lists or an HNSW's beam hold too few allowed ids): redo those
            # queries exactly over the allowed subset.
            logger.debug("exact fallback for %d of %d queries", short.size, q.shape[0])
            ex_scores, ex_rows = self._exact(q[short], allowed_rows, want)
            scores[short] = ex_scores
            rows[short] = ex_rows
        return self._candidates(scores, rows)

    def score_rows(
        self,
        score: Callable[[F32Array], npt.NDArray[np.float64]],
        filter: SearchFilter | None = None,
        block: int = 8192,
    ) -> tuple[list[str], npt.NDArray[np.float64]]:
        """Apply ``score`` to the vectors of every product passing ``filter``, a block of
        rows at a time (no copy of the whole matrix), for queries a single inner product
        cannot express (e.g. late fusion, which normalises per modality over the set).

        Args:
            score: Maps a ``(b, dim)`` block of stored vectors to ``(b, c)`` values.
            filter: Restrictions; ``None`` means ``SearchFilter()`` (available only).
            block: Rows per call of ``score``.

        Returns:
            The ids of the passing products and their ``(n, c)`` values, in row order.
        """
        mask = self._mask(filter if filter is not None else SearchFilter())
        rows = np.flatnonzero(self._alive if mask is None else mask)
        parts = [
            np.asarray(score(self._vectors[rows[lo : lo + block]]), dtype=np.float64)
            for lo in range(0, rows.size, block)
        ]
        values = np.concatenate(parts) if parts else np.zeros((0, 0))
        return [str(self._pids[r]) for r in rows.tolist()], values

    def _post_filtered(
        self, q: F32Array, want: int, mask: BoolArray, share: float
    ) -> list[list[Candidate]] | None:
        """Unfiltered search for a few more than ``want``, then drop what ``mask`` refuses.

        When most of the index passes (the usual request: available products minus the
        handful a user bought), this is several times cheaper than handing FAISS a selector
        over every allowed id, which costs O(index) per request to build. Returns ``None``
        when any query kept fewer than ``want``: the caller then runs the filtered search.
        For IVF and Flat the result is the filtered search's (the allowed products among the
        probed lists' best ``fetch`` are their best allowed ones).
        """
        fetch = min(len(self), int(want / share * _POST_FILTER_OVERFETCH) + 8)
        scores, ids = self._index.search(q, fetch)
        rows = self._rows_of_int(ids)
        ok = rows >= 0
        ok[ok] = mask[rows[ok]]
        if int(ok.sum(axis=1).min()) < want:
            return None
        # A stable sort on "refused" keeps the score order among the allowed ones.
        pick = np.argsort(~ok, axis=1, kind="stable")[:, :want]
        return self._candidates(
            np.take_along_axis(scores, pick, axis=1), np.take_along_axis(rows, pick, axis=1)
        )

    def _mask(self, f: SearchFilter) -> BoolArray | None:
        """Rows passing ``f`` (vectorised); ``None`` when every live row passes.

        Dead rows never pass; ``None`` still applies then, because the ANN backend holds
        live products only.
        """
        mask = self._alive.copy()
        if f.available_only:
            mask &= self._available
        prefix = f.category_prefix
        if prefix is not None:
            deeper = prefix + CATEGORY_SEPARATOR
            vocab_ok = np.fromiter(
                (c == prefix or c.startswith(deeper) for c in self._vocab),
                dtype=bool,
                count=len(self._vocab),
            )
            mask &= vocab_ok[self._category_code] if vocab_ok.size else False
        # NaN prices compare False, so unpriced products drop out under a price bound.
        if f.min_price is not None:
            mask &= self._price >= f.min_price
        if f.max_price is not None:
            mask &= self._price <= f.max_price
        if f.launched_after is not None:
            mask &= self._launched_us > epoch_microseconds(f.launched_after)
        if f.exclude_ids:
            known = [p for p in f.exclude_ids if p in self._id_of]
            if known:
                mask[self._rows_of(known)] = False
        every_live_row = np.array_equal(mask, self._alive) if self._dead else bool(mask.all())
        return None if every_live_row else mask

    def _exact(self, q: F32Array, rows: I64Array | None, k: int) -> tuple[F32Array, I64Array]:
        """Exact top-``k`` rows among ``rows`` (all live rows when None), blockwise."""
        if rows is None and self._dead:
            rows = np.flatnonzero(self._alive)
        total = self._rows if rows is None else int(rows.size)
        best_s = np.full((q.shape[0], 0), -np.inf, dtype=np.float32)
        best_r = np.empty((q.shape[0], 0), dtype=np.int64)
        for lo in range(0, total, _EXACT_BLOCK):
            hi = min(total, lo + _EXACT_BLOCK)
            block_rows = np.arange(lo, hi) if rows is None else rows[lo:hi]
            block = self._vectors[lo:hi] if rows is None else self._vectors[block_rows]
            s = q @ block.T
            cand_s = np.concatenate([best_s, s], axis=1)
            cand_r = np.concatenate(
                [best_r, np.broadcast_to(block_rows.astype(np.int64), s.shape)], axis=1
            )
            if cand_s.shape[1] > k:
                top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
                cand_s = np.take_along_axis(cand_s, top, axis=1)
                cand_r = np.take_along_axis(cand_r, top, axis=1)
            best_s, best_r = cand_s, cand_r
        order = np.argsort(-best_s, axis=1, kind="stable")
        return (
            np.take_along_axis(best_s, order, axis=1).astype(np.float32),
            np.take_along_axis(best_r, order, axis=1),
        )

    def _candidates(self, scores: F32Array, rows: I64Array) -> list[list[Candidate]]:
        out: list[list[Candidate]] = []
        for s_row, r_row in zip(scores.tolist(), rows.tolist(), strict=True):
            out.append(
                [
                    Candidate(str(self._pids[r]), float(s))
                    for s, r in zip(s_row, r_row, strict=True)
                    if r >= 0
                ]
            )
        return out

    # -- persistence ----------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the index into ``directory`` (created if needed; files overwritten)."""
        # Only live rows are written (dead rows are an in-memory detail).
        live = self._alive if self._dead else slice(None)
        columns = StoreColumns(
            config=self._config,
            int_ids=self._int_ids[live],
            product_ids=self.product_ids(),
            vectors=self._vectors[live],
            category_vocab=list(self._vocab),
            category_code=self._category_code[live],
            price=self._price[live],
            launched_us=self._launched_us[live],
            available=self._available[live],
            next_id=self._next_id,
        )
        write_store(Path(directory), columns, self._index)

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        use_gpu: bool = False,
        exact_below: int = 10_000,
        exact_fraction: float = 0.05,
    ) -> ProductIndex:
        """Read an index written by :meth:`save`, checking its invariants.

        Args:
            directory: The directory :meth:`save` wrote.
            use_gpu: Search on GPU (resolve it once at the edge).
            exact_below: See :meth:`build`.
            exact_fraction: See :meth:`build`.

        Raises:
            IndexIntegrityError: A file is missing or the files disagree (the message
                names both numbers).
        """
        columns, index = read_store(Path(directory), use_gpu=use_gpu)
        return cls(
            config=columns.config,
            index=index,
            int_ids=columns.int_ids,
            product_ids=columns.product_ids,
            vectors=columns.vectors,
            category_vocab=columns.category_vocab,
            category_code=columns.category_code,
            price=columns.price,
            launched_us=columns.launched_us,
            available=columns.available,
            next_id=columns.next_id,
            exact_below=exact_below,
            exact_fraction=exact_fraction,
        )

    # -- internals ------------------------------------------------------------------

    def _check_batch(self, products: Sequence[Product], x: np.ndarray[Any, Any]) -> F32Array:
        """Validate a batch and return unit-norm float32 vectors (a copy)."""
        if x.ndim != 2 or x.shape[0] != len(products) or x.shape[1] != self.dim:
            raise ValueError(
                f"vectors must have shape ({len(products)}, {self.dim}) (one row per "
                f"product), got {x.shape}."
            )
        seen: set[str] = set()
        dups = []
        for p in products:
            if p.product_id in seen:
                dups.append(p.product_id)
            seen.add(p.product_id)
        if dups:
            raise CatalogError(
                f"duplicate product ids in one batch: {_preview(dups)}; keep one row per id."
            )
        unit = np.array(x, dtype=np.float32, order="C", copy=True)
        norms = np.linalg.norm(unit, axis=1)
        bad = ~np.isfinite(norms) | (norms < 1e-12)
        if bad.any():
            ids = [products[i].product_id for i in np.flatnonzero(bad).tolist()]
            raise CatalogError(
                f"vectors for {_preview(ids)} are zero or not finite and cannot be "
                f"normalised; re-encode those products or leave them out."
            )
        if unit.shape[0]:
            faiss.normalize_L2(unit)
        return unit

    def _check_queries(self, queries: F32Array) -> F32Array:
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(
                f"queries must have shape (q, {self.dim}) or ({self.dim},), got "
                f"{np.shape(queries)}."
            )
        q = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or infinite values; fix the query vectors.")
        return q

    def _append(self, products: Sequence[Product], unit: F32Array, ids: I64Array) -> None:
        codes = np.empty(len(products), dtype=np.int32)
        for i, p in enumerate(products):
            path = normalise_category(CATEGORY_SEPARATOR.join(p.category))
            code = self._code_of.get(path)
            if code is None:
                code = len(self._vocab)
                self._vocab.append(path)
                self._code_of[path] = code
            codes[i] = code
        price = np.array(
            [np.nan if p.price is None else float(p.price) for p in products], dtype=np.float64
        )
        launched = np.array([_launch_us(p) for p in products], dtype=np.int64)
        available = np.array([bool(p.available) for p in products], dtype=bool)
        values: dict[str, np.ndarray[Any, Any]] = {
            "_int_ids": ids,
            "_pids": np.asarray([p.product_id for p in products], dtype=object),
            "_vectors": unit,
            "_category_code": codes,
            "_price": price,
            "_launched_us": launched,
            "_available": available,
            "_alive": np.ones(len(products), dtype=bool),
        }
        start, end = self._rows, self._rows + len(products)
        self._reserve(end)
        for name, column in values.items():
            self._buffers[name][start:end] = column
        self._rows = end
        self._sync_views()
        for p, i in zip(products, ids.tolist(), strict=True):
            self._id_of[p.product_id] = int(i)

    def _reserve(self, rows: int) -> None:
        """Make the column buffers hold at least ``rows`` rows (geometric growth)."""
        capacity = int(self._buffers["_int_ids"].shape[0])
        if rows <= capacity:
            return
        capacity = max(rows, self._rows + max(_MIN_SPARE, int(self._rows * _GROWTH)))
        for name, old in self._buffers.items():
            grown = np.empty((capacity, *old.shape[1:]), dtype=old.dtype)
            grown[: self._rows] = old[: self._rows]
            self._buffers[name] = grown

    def _sync_views(self) -> None:
        """Point the column attributes at the used part of their buffers."""
        for name in _COLUMNS:
            setattr(self, name, self._buffers[name][: self._rows])

    def _compact_rows(self) -> None:
        """Drop dead rows from every column (one copy of the live rows)."""
        if not self._dead:
            return
        keep = self._alive.copy()
        for name in _COLUMNS:
            self._buffers[name] = np.ascontiguousarray(getattr(self, name)[keep])
        self._rows = int(keep.sum())
        self._dead = 0
        self._sync_views()

    def _remove_known(self, product_ids: Sequence[str]) -> int:
        rows = self._rows_of(product_ids)
        removed = self._index.remove(np.sort(self._int_ids[rows]))
        if removed != len(rows):
            raise IndexIntegrityError(
                f"the ANN index removed {removed} vectors for {len(rows)} known products; "
                f"rebuild the index."
            )
        # The row stays as a dead row (no copy of the other rows); see _maybe_compact.
        self._alive[rows] = False
        self._dead += int(rows.size)
        for pid in product_ids:
            del self._id_of[pid]
        return removed

    def _maybe_compact(self) -> None:
        dead = self._index.tombstones
        if dead and dead > COMPACT_TOMBSTONE_SHARE * (dead + len(self)):
            logger.info("compacting: %d tombstones, %d live vectors", dead, len(self))
            self.compact()
        elif self._dead > COMPACT_TOMBSTONE_SHARE * self._rows:
            self._compact_rows()

    def _rows_of(self, product_ids: Sequence[str]) -> I64Array:
        missing = [p for p in product_ids if p not in self._id_of]
        if missing:
            raise UnknownProductError(
                f"{len(missing)} unknown product id(s): {_preview(missing)}; check the id "
                f"or add the product first."
            )
        int_ids = np.fromiter((self._id_of[p] for p in product_ids), dtype=np.int64)
        return np.searchsorted(self._int_ids, int_ids).astype(np.int64)

    def _rows_of_int(self, int_ids: I64Array) -> I64Array:
        """Rows of backend result ids; -1 stays -1."""
        if not self._int_ids.size:
            return np.full(int_ids.shape, -1, dtype=np.int64)
        rows = np.searchsorted(self._int_ids, int_ids)
        rows = np.minimum(rows, self._int_ids.size - 1)
        valid = int_ids >= 0
        if not np.array_equal(self._int_ids[rows][valid], int_ids[valid]):
            raise IndexIntegrityError(
                "the ANN index returned int ids that no live product has; rebuild the index."
            )
        return np.where(valid, rows, -1).astype(np.int64)


def _launch_us(product: Product) -> int:
    if product.launched_at is None:
        return NO_LAUNCH
    if product.launched_at.tzinfo is None:
        raise CatalogError(
            f"product {product.product_id!r} has a naive launched_at "
            f"{product.launched_at.isoformat()}; readers must produce timezone-aware UTC."
        )
    return epoch_microseconds(product.launched_at)


def _preview(values: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"[{shown}]{more}"
