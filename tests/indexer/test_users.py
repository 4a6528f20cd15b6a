from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from newarrivals.indexer import ConfigError, EventType, Interaction, Product
from newarrivals.indexer.index.ann import AnnConfig
from newarrivals.indexer.index.store import ProductIndex
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
