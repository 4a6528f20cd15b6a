"""User vectors in the product space: a recency- and event-weighted mean of product vectors.

Because a user is a point in the same space as the products, any indexed product, including
one indexed a second ago with no interactions, can be retrieved for them.

Weight of an event = ``event_weights[event] * 0.5 ** (age_days / half_life_days)``. The user
vector is the L2-normalised weighted sum of the vectors of the products involved.

Updates are incremental: the state keeps the weighted sum *as of a reference time*; a new
event decays the sum to the event's time and adds the event, O(dim) per event. Decay scales
every term equally, so the direction (all that retrieval uses) never needs re-decaying at
query time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from newarrivals.indexer.catalog.schema import EventType, Interaction
from newarrivals.indexer.encoders.base import l2_normalize
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.store import ProductIndex

__all__ = ["DEFAULT_EVENT_WEIGHTS", "UserState", "UserVectorConfig", "UserVectors"]

DEFAULT_EVENT_WEIGHTS: Mapping[EventType, float] = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 1.5,
    EventType.CART: 3.0,
    EventType.PURCHASE: 5.0,
}
_DAY = 86_400.0


@dataclass(frozen=True)
class UserVectorConfig:
    """Args:
    event_weights: how much each event type counts (purchases most).
    half_life_days: an event this old counts half as much as one happening now.
    """

    event_weights: Mapping[EventType, float] = field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS)
    )
    half_life_days: float = 30.0

    def __post_init__(self) -> None:
        weights = {EventType(k): float(v) for k, v in self.event_weights.items()}
        bad = {k.value: v for k, v in weights.items() if not (v >= 0 and np.isfinite(v))}
        if bad:
            raise ConfigError(f"event weights must be finite and >= 0; got {bad}.")
        object.__setattr__(self, "event_weights", weights)
        if not self.half_life_days > 0:
            raise ConfigError(f"half_life_days must be > 0, got {self.half_life_days}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_weights": {k.value: v for k, v in self.event_weights.items()},
            "half_life_days": self.half_life_days,
        }


@dataclass
class UserState:
    """One user's running sum, its reference time, and what they bought."""

    vector_sum: np.ndarray
    reference_time: float
    n_events: int = 0
    purchased: set[str] = field(default_factory=set)
    recent: list[str] = field(default_factory=list)


class UserVectors:
    """Per-user vectors over a product store, updated one event at a time.

    Example:
        >>> users = UserVectors(store)  # doctest: +SKIP
        >>> users.update_many(catalog.interactions)  # doctest: +SKIP
        >>> store.search(users.vector("u1")[None, :], k=10)  # doctest: +SKIP
    """

    def __init__(
        self, store: ProductIndex, config: UserVectorConfig | None = None, *, recent_limit: int = 20
    ) -> None:
        self.store = store
        self.config = config or UserVectorConfig()
        self.recent_limit = recent_limit
        self._states: dict[str, UserState] = {}

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def user_ids(self) -> list[str]:
        return list(self._states)

    def state(self, user_id: str) -> UserState | None:
        return self._states.get(user_id)

    def update(self, event: Interaction) -> bool:
        """Fold one event into its user's vector; False when the product is not indexed."""
        if event.product_id not in self.store:
            return False
        weight = self.config.event_weights.get(event.event, 0.0)
        t = _epoch(event.timestamp)
        st = self._states.get(event.user_id)
        vec = self.store.vector(event.product_id).astype(np.float64)
        if st is None:
            st = UserState(vector_sum=np.zeros_like(vec), reference_time=t)
            self._states[event.user_id] = st
        half_life = self.config.half_life_days * _DAY
        if t >= st.reference_time:
            st.vector_sum *= 0.5 ** ((t - st.reference_time) / half_life)
            st.reference_time = t
            st.vector_sum += weight * vec
        else:
            # An out-of-order (older) event: discount it to the reference time instead.
            st.vector_sum += weight * 0.5 ** ((st.reference_time - t) / half_life) * vec
        st.n_events += 1
        if event.event is EventType.PURCHASE:
            st.purchased.add(event.product_id)
        if event.product_id in st.recent:
            st.recent.remove(event.product_id)
        st.recent.insert(0, event.product_id)
        del st.recent[self.recent_limit :]
        return True

    def update_many(self, events: Iterable[Interaction]) -> int:
        """Fold events in time order; returns how many referred to indexed products."""
        return sum(self.update(e) for e in sorted(events, key=lambda e: e.timestamp))

    def vector(self, user_id: str) -> np.ndarray | None:
        """The user's unit vector, or ``None`` for a user with no usable history."""
        st = self._states.get(user_id)
        if st is None or not np.any(st.vector_sum):
            return None
        unit: np.ndarray = l2_normalize(st.vector_sum.astype(np.float32)[None, :])[0]
        return unit

    def erase(self, user_id: str) -> bool:
        return self._states.pop(user_id, None) is not None


def _epoch(ts: datetime) -> float:
    return ts.timestamp()
