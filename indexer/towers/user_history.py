"""Per-user histories and tower vectors kept up to date one event at a time.

:class:`UserHistoryStore` is the user tower's counterpart of
:class:`~newarrivals.indexer.retrieval.users.UserVectors`: both satisfy
:class:`~newarrivals.indexer.retrieval.search.UserVectorSource`, so retrieval can take
either. Nothing serves it yet: the API and the CLI recommend from ``UserVectors``, and only
the tests drive this store. It lives beside the tower rather than in ``retrieval/`` because
it depends on the tower, and ``retrieval`` must not import ``towers`` (the towers build on
``retrieval.users``).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from newarrivals.indexer.arrays import F32Array
from newarrivals.indexer.catalog.schema import EventType, Interaction
from newarrivals.indexer.towers.user import UserTower
from newarrivals.indexer.towers.user_data import ProductVectors

__all__ = ["UserHistory", "UserHistoryStore"]


@dataclass
class UserHistory:
    """One user's last ``max_history`` usable events (time-ordered), purchases and vector."""

    events: list[Interaction] = field(default_factory=list)
    purchased: set[str] = field(default_factory=set)
    vector: F32Array | None = None


class UserHistoryStore:
    """Per-user bounded histories and tower vectors, updated one event at a time.

    A new event touches only its user: it is inserted into that user's time-ordered history
    (the oldest event beyond ``max_history`` is dropped) and the user's vector is recomputed
    from at most ``max_history`` events. Vectors are as of each user's latest event; use
    :meth:`vector_at` for another prediction time. ``vector`` and ``state`` make it a drop-in
    for ``UserVectors`` in :func:`~newarrivals.indexer.retrieval.search.retrieve_for_user`.

    Example:
        >>> users = UserHistoryStore(tower, store)  # doctest: +SKIP
        >>> users.update_many(catalog.interactions)  # doctest: +SKIP
        >>> users.update(Interaction("u1", "sku-9", EventType.CART, now))  # doctest: +SKIP
        >>> retrieve_for_user(store, users, "u1", k=10)  # doctest: +SKIP
    """

    def __init__(self, tower: UserTower, products: ProductVectors) -> None:
        tower.check_dim(products.dim)
        self.tower = tower
        self.products = products
        self._users: dict[str, UserHistory] = {}

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and user_id in self._users

    def __len__(self) -> int:
        return len(self._users)

    def user_ids(self) -> list[str]:
        return list(self._users)

    def state(self, user_id: str) -> UserHistory | None:
        return self._users.get(user_id)

    def vector(self, user_id: str) -> F32Array | None:
        """The user's unit vector as of their latest event, or ``None`` without history."""
        st = self._users.get(user_id)
        return None if st is None else st.vector

    def vector_at(self, user_id: str, now: datetime) -> F32Array | None:
        """The user's vector as of ``now`` (recomputed; time gaps measured to ``now``)."""
        st = self._users.get(user_id)
        return None if st is None else self.tower.vector_for(st.events, self.products, now=now)

    def _insert(self, event: Interaction) -> bool:
        if event.product_id not in self.products:
            return False
        st = self._users.setdefault(event.user_id, UserHistory())
        insort(st.events, event, key=lambda e: e.timestamp)
        del st.events[: max(0, len(st.events) - self.tower.config.max_history)]
        if event.event is EventType.PURCHASE:
            st.purchased.add(event.product_id)
        return True

    def update(self, event: Interaction) -> bool:
        """Fold one event in and recompute only its user; False for an unknown product."""
        if not self._insert(event):
            return False
        st = self._users[event.user_id]
        st.vector = self.tower.vector_for(st.events, self.products)
        return True

    def update_many(self, events: Iterable[Interaction]) -> int:
        """Fold many events in, recomputing each touched user once; returns events used."""
        touched: set[str] = set()
        used = 0
        for e in events:
            if self._insert(e):
                touched.add(e.user_id)
                used += 1
        order = sorted(touched)
        vectors = self.tower.vectors_for([self._users[u].events for u in order], self.products)
        for user_id, vec in zip(order, vectors, strict=True):
            self._users[user_id].vector = vec
        return used

    def erase(self, user_id: str) -> bool:
        return self._users.pop(user_id, None) is not None
