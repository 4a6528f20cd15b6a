from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from newarrivals.indexer import ConfigError, EventType, Interaction, Product
from newarrivals.indexer.index.ann import AnnConfig
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.retrieval.search import (
    PopularFallback,
    recommend_for_session,
    recommend_for_user,
    session_query,
    session_vectors,
)
from newarrivals.indexer.retrieval.users import UserVectorConfig, UserVectors

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _store() -> ProductIndex:
    vecs = np.eye(4, dtype=np.float32)
    products = [Product(f"p{i}", title=f"p{i}") for i in range(4)]
    return ProductIndex.build(products, vecs, AnnConfig())


def _ev(user: str, pid: str, event: EventType, days: float) -> Interaction:
    return Interaction(user, pid, event, T0 + timedelta(days=days))


def test_weights_recency_and_event_type() -> None:
    users = UserVectors(_store(), UserVectorConfig(half_life_days=10))
    users.update(_ev("u", "p0", EventType.PURCHASE, 0))
    users.update(_ev("u", "p1", EventType.VIEW, 10))
    v = users.vector("u")
    assert v is not None
    # purchase weight 5 decayed one half-life -> 2.5; view weight 1 now -> 1.
    np.testing.assert_allclose(v[:2] / v[0], [1.0, 1 / 2.5], rtol=1e-5)
    assert users.state("u") is not None and users.state("u").purchased == {"p0"}  # type: ignore[union-attr]


def test_incremental_matches_batch_regardless_of_order() -> None:
    events = [
        _ev("u", "p0", EventType.VIEW, 1),
        _ev("u", "p1", EventType.CART, 5),
        _ev("u", "p2", EventType.PURCHASE, 9),
        _ev("u", "p3", EventType.CLICK, 3),
    ]
    batch = UserVectors(_store())
    batch.update_many(events)
    streamed = UserVectors(_store())
    for e in events:  # out of time order on purpose
        streamed.update(e)
    np.testing.assert_allclose(batch.vector("u"), streamed.vector("u"), rtol=1e-5)  # type: ignore[arg-type]


def test_unknown_products_and_users() -> None:
    users = UserVectors(_store())
    assert users.update(_ev("u", "nope", EventType.VIEW, 0)) is False
    assert users.vector("u") is None and "u" not in users
    users.update(_ev("u", "p0", EventType.VIEW, 0))
    assert users.erase("u") and users.vector("u") is None


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="half_life_days must be > 0, got 0"):
        UserVectorConfig(half_life_days=0)
    with pytest.raises(ConfigError, match="purchase"):
        UserVectorConfig(event_weights={EventType.PURCHASE: -1.0})


def test_user_and_session_share_one_recommend_path() -> None:
    store = _store()
    events = [_ev("u", "p0", EventType.PURCHASE, 0), _ev("u", "p1", EventType.VIEW, 1)]
    users = UserVectors(store)
    users.update_many(events)
    fallback = PopularFallback.fit(store, events)
    warm = recommend_for_user(store, users, "u", 4, fallback=fallback)
    # The same events sent as an anonymous session give the same candidates, once the
    # session's seen products are allowed back in.
    session = [(e.product_id, e.event, e.timestamp) for e in events]
    anon = recommend_for_session(store, session, 4, fallback=fallback, exclude_seen=False)
    assert not warm.fallback and not anon.fallback
    assert [c.product_id for c in anon.candidates] == [c.product_id for c in warm.candidates]
    assert "p0" not in {c.product_id for c in warm.candidates}  # bought: left out
    seen_out = recommend_for_session(store, session, 4, fallback=fallback)
    assert {c.product_id for c in seen_out.candidates} <= {"p2", "p3"}
    # Nothing indexed in the session: the popular fallback, flagged with its rule.
    empty = recommend_for_session(store, [("nope", EventType.VIEW, T0)], 2, fallback=fallback)
    assert empty.fallback and empty.reason.startswith("empty session: ")
    query = session_query(session_vectors(store, session), fallback, exclude_seen=True)
    assert query.exclude_ids == {"p0", "p1"} and query.user_vector is not None
