"""Who would want a brand-new product: an index over user vectors and each user's top-k.

:class:`AudienceIndex` keeps every user vector as a row of one float32 matrix (grown
geometrically, a row updated in place when the user's vector changes, a row marked dead
when the user is erased) and, per user, the scores of their current top-``K`` retrieval
list (``K`` = ``audience_max_k``), exactly what ``GET /v1/users/{id}/recommendations``
would rank with its default filter (available products, already-bought ones excluded).

For a new product vector ``v`` and a user ``u`` with list scores ``s_1 >= ... >= s_k``:

* ``score = <u, v>``, the retrieval score the product would get for ``u``;
* ``in_top_k``: ``score > s_k``: the product would enter ``u``'s top ``k``;
* ``probability = exp(score/T) / (exp(score/T) + sum_j exp(s_j/T))``: the softmax share it
  would get among ``u``'s top ``k`` plus itself, the ranker's formulation applied to
  retrieval scores. ``T`` (``audience_temperature``, default 0.05) is a fixed, documented
  choice, not fitted: cosine gaps between neighbouring products are a few hundredths, and
  at ``T = 0.05`` a product 0.05 closer than another is ``e`` times as likely.
* reach = how many users have ``in_top_k``; ``expected_picks`` = the sum of the
  probabilities over all users.

The top users are the ones with the highest probability. Every user is scored: one exact
matrix-vector product over the user matrix (BLAS, the same arithmetic as a flat FAISS
inner-product index). Reach needs ``<u, v>`` for *every* user anyway, to compare each with
that user's own k-th score, so an approximate index would not save that scan; and a FAISS
``IndexIDMap`` over a flat index copies the whole matrix on every removal, which the event
stream (one update per event) cannot afford.

The per-user lists are a cache, kept current without rescanning everyone:

* a user's event changes their vector (and maybe what they bought): their row is marked
  stale;
* a product upsert: users whose cached list holds the product are marked stale (its score
  changed); for everyone else the new score is inserted where it beats their k-th (one
  matrix-vector product), except users who bought it (marked stale: it is excluded for them);
* a delete, or a product turning unavailable: users whose list holds it are marked stale;
* stale rows are recomputed, in batches of searches, by the next lookup.

Approximation, stated plainly: the lists come from the product index's own search (an
approximate one for IVF/HNSW indexes, like the recommendations themselves), and for a user
with more purchases than ``_PURCHASE_HEADROOM`` the list may hold fewer than ``K`` items
(then everything ranks above their missing k-th, so reach counts them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from newarrivals.indexer.index.filters import SearchFilter
from newarrivals.indexer.index.store import ProductIndex

__all__ = ["AudienceIndex", "AudienceResult", "AudienceUser"]


#: Extra results fetched per user so that excluding what they bought still leaves K.
_PURCHASE_HEADROOM: Final = 256
#: Users recomputed per batch of searches.
_BATCH: Final = 512
_GROWTH: Final = 0.25
_MIN_SPARE: Final = 64


@dataclass(frozen=True)
class AudienceUser:
    """One user the new product would suit."""

    user_id: str
    score: float
    probability: float
    in_top_k: bool
    rank_if_added: int


@dataclass(frozen=True)
class AudienceResult:
    """The answer of :meth:`AudienceIndex.score`."""

    users: list[AudienceUser]
    reach: int
    users_considered: int
    expected_picks: float
    k: int
    temperature: float


class AudienceIndex:
    """User vectors and their cached top-``K`` retrieval scores (see the module docstring).

    Mutators run under the service's write lock; :meth:`refresh` and :meth:`score` run
    under its read lock, serialised among themselves by an internal lock.

    Example:
        >>> audience = AudienceIndex(dim=384, k=20)
        >>> audience.set_user("u1", unit_vector)  # doctest: +SKIP
        >>> audience.refresh(store, purchased=lambda u: set())  # doctest: +SKIP
        >>> audience.score(new_vector, k=10, temperature=0.05, top=5).reach  # doctest: +SKIP
    """

    def __init__(self, dim: int, k: int) -> None:
        if dim < 1 or k < 1:
            raise ValueError(f"dim and k must be positive, got dim={dim}, k={k}.")
        self.dim = dim
        self.k = k
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self._rows = 0
        self._dead = 0
        self._matrix = np.zeros((0, dim), dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self._fresh = np.zeros(0, dtype=bool)
        self._top_scores = np.zeros((0, k), dtype=np.float32)
        self._top_codes = np.zeros((0, k), dtype=np.int64)
        # Product ids interned as ints so "which lists hold product p" is one comparison.
        self._code_of: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._rows - self._dead

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and user_id in self._row_of

    @property
    def stale(self) -> int:
        """Live users whose cached list must be recomputed before the next lookup."""
        n = self._rows
        return int((self._alive[:n] & ~self._fresh[:n]).sum())

    # -- mutation (service write lock held) ---------------------------------------------

    def set_user(self, user_id: str, vector: np.ndarray | None) -> None:
        """Insert or update a user's vector (``None``: the user has no usable vector)."""
        if vector is None:
            self.remove_user(user_id)
            return
        row = self._row_of.get(user_id)
        if row is None:
            row = self._append_row(user_id)
        self._matrix[row] = np.asarray(vector, dtype=np.float32)
        self._fresh[row] = False

    def remove_user(self, user_id: str) -> bool:
        row = self._row_of.pop(user_id, None)
        if row is None:
            return False
        self._alive[row] = False
        self._fresh[row] = False
        self._matrix[row] = 0.0
        self._dead += 1
        if self._dead > 0.25 * self._rows:
            self._compact()
        return True

    def user_changed(self, user_id: str) -> None:
        """The user's purchases changed without a new vector: recompute their list."""
        row = self._row_of.get(user_id)
        if row is not None:
            self._fresh[row] = False

    def product_changed(
        self,
        product_id: str,
        vector: np.ndarray | None,
        *,
        purchased_by: Callable[[str], bool],
    ) -> None:
        """A product was upserted (``vector`` = its new unit vector when it is available),
        removed or made unavailable (``vector`` = ``None``)."""
        n = self._rows
        if not n:
            return
        code = self._code_of.get(product_id)
        if code is not None:
            holds = (self._top_codes[:n] == code).any(axis=1)
            self._fresh[:n] &= ~holds
        if vector is None:
            return
        code = self._intern(product_id)
        scores = self._matrix[:n] @ np.asarray(vector, dtype=np.float32)
        enters = np.flatnonzero(
            self._alive[:n] & self._fresh[:n] & (scores > self._top_scores[:n, -1])
        )
        if not enters.size:
            return
        bought = np.array([purchased_by(self._ids[r]) for r in enters.tolist()], dtype=bool)
        self._fresh[enters[bought]] = False
        rows = enters[~bought]
        if not rows.size:
            return
        s = np.concatenate([self._top_scores[rows], scores[rows, None]], axis=1)
        c = np.concatenate(
            [self._top_codes[rows], np.full((rows.size, 1), code, dtype=np.int64)], axis=1
        )
        order = np.argsort(-s, axis=1, kind="stable")[:, : self.k]
        self._top_scores[rows] = np.take_along_axis(s, order, axis=1)
        self._top_codes[rows] = np.take_along_axis(c, order, axis=1)

    # -- the cache --------------------------------------------------------------------

    def refresh(self, store: ProductIndex, purchased: Callable[[str], set[str]]) -> int:
        """Recompute every stale user's top-``K`` list; returns how many were recomputed."""
        with self._lock:
            return self._refresh(store, purchased)

    def _refresh(self, store: ProductIndex, purchased: Callable[[str], set[str]]) -> int:
        n = self._rows
        todo = np.flatnonzero(self._alive[:n] & ~self._fresh[:n])
        flt = SearchFilter()
        for start in range(0, todo.size, _BATCH):
            rows = todo[start : start + _BATCH]
            bought = [purchased(self._ids[r]) for r in rows.tolist()]
            extra = min(max((len(b) for b in bought), default=0), _PURCHASE_HEADROOM)
            lists = store.search(self._matrix[rows], self.k + extra, flt)
            scores = np.full((rows.size, self.k), -np.inf, dtype=np.float32)
            codes = np.full((rows.size, self.k), -1, dtype=np.int64)
            for i, (cands, skip) in enumerate(zip(lists, bought, strict=True)):
                kept = [c for c in cands if c.product_id not in skip][: self.k]
                scores[i, : len(kept)] = [c.score for c in kept]
                codes[i, : len(kept)] = [self._intern(c.product_id) for c in kept]
            self._top_scores[rows] = scores
            self._top_codes[rows] = codes
            self._fresh[rows] = True
        return int(todo.size)

    def score(
        self,
        vector: np.ndarray,
        *,
        k: int,
        temperature: float,
        top: int,
        store: ProductIndex,
        purchased: Callable[[str], set[str]],
    ) -> AudienceResult:
        """Score a new product vector against every user (stale lists refreshed first).

        Args:
            vector: The product's unit vector.
            k: The top-k that reach counts (at most the index's ``K``).
            temperature: Softmax temperature ``T``.
            top: How many users to return, most probable first.
            store: The product index the lists come from (for the refresh).
            purchased: What a user bought (excluded from their list).
        """
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in [1, {self.k}], got {k}.")
        with self._lock:
            self._refresh(store, purchased)
            n = self._rows
            rows = np.flatnonzero(self._alive[:n])
            if not rows.size:
                return AudienceResult([], 0, 0, 0.0, k, temperature)
            s = (self._matrix[rows] @ np.asarray(vector, dtype=np.float32)).astype(np.float64)
            lists = self._top_scores[rows, :k].astype(np.float64)
        kth = lists[:, -1]
        in_top = s > kth
        z = s / temperature
        with np.errstate(divide="ignore", invalid="ignore"):
            finite = np.where(np.isfinite(lists), lists / temperature, -np.inf)
            peak = np.maximum(finite.max(axis=1), z)
            denom = np.exp(z - peak) + np.exp(finite - peak[:, None]).sum(axis=1)
            prob = np.exp(z - peak) / denom
        order = np.argsort(-prob, kind="stable")[:top]
        users = [
            AudienceUser(
                user_id=self._ids[int(rows[i])],
                score=float(s[i]),
                probability=float(prob[i]),
                in_top_k=bool(in_top[i]),
                rank_if_added=int((lists[i] >= s[i]).sum()) + 1,
            )
            for i in order.tolist()
        ]
        return AudienceResult(
            users=users,
            reach=int(in_top.sum()),
            users_considered=int(rows.size),
            expected_picks=float(prob.sum()),
            k=k,
            temperature=temperature,
        )

    # -- internals ----------------------------------------------------------------------

    def _intern(self, product_id: str) -> int:
        code = self._code_of.get(product_id)
        if code is None:
            code = len(self._code_of)
            self._code_of[product_id] = code
        return code

    def _append_row(self, user_id: str) -> int:
        row = self._rows
        if row >= self._matrix.shape[0]:
            self._resize(max(row + 1, row + max(_MIN_SPARE, int(row * _GROWTH))))
        self._ids.append(user_id)
        self._row_of[user_id] = row
        self._alive[row] = True
        self._fresh[row] = False
        self._top_scores[row] = -np.inf
        self._top_codes[row] = -1
        self._rows += 1
        return row

    def _resize(self, capacity: int) -> None:
        n = self._rows

        def grow(old: np.ndarray, fill: float | int | bool) -> np.ndarray:
            new = np.full((capacity, *old.shape[1:]), fill, dtype=old.dtype)
            new[:n] = old[:n]
            return new

        self._matrix = grow(self._matrix, 0.0)
        self._alive = grow(self._alive, False)
        self._fresh = grow(self._fresh, False)
        self._top_scores = grow(self._top_scores, -np.inf)
        self._top_codes = grow(self._top_codes, -1)

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive[: self._rows])
        self._ids = [self._ids[r] for r in keep.tolist()]
        self._row_of = {u: i for i, u in enumerate(self._ids)}
        self._matrix = np.ascontiguousarray(self._matrix[keep])
        self._alive = np.ones(keep.size, dtype=bool)
        self._fresh = self._fresh[keep].copy()
        self._top_scores = self._top_scores[keep].copy()
        self._top_codes = self._top_codes[keep].copy()
        self._rows = int(keep.size)
        self._dead = 0

    def user_ids(self) -> Sequence[str]:
        return [u for u in self._ids if u in self._row_of]
