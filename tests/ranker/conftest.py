"""What the ranker tests share: one torch thread, and a shop with a known signal."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from newarrivals.indexer.catalog.schema import EventType, Interaction, Product
from newarrivals.indexer.index.ann import AnnConfig
from newarrivals.indexer.index.store import ProductIndex

COLOURS = ("red", "blue", "green", "black", "white", "yellow")
GARMENTS = ("shirt", "dress", "coat", "boot", "hat", "scarf")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread: tiny models on a shared 2-core machine run far faster unthreaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Shop:
    """A hand-made catalogue with a known signal: each shopper buys one colour."""

    def __init__(self, n_users: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.products = [
            Product(
                f"p{c}{g}{v}",
                title=f"{COLOURS[c]} {GARMENTS[g]} model {v}",
                category=("Clothing", GARMENTS[g]),
                attributes={"colour": COLOURS[c]},
            )
            for c in range(len(COLOURS))
            for g in range(len(GARMENTS))
            for v in range(4)
        ]
        self.by_id = {p.product_id: p for p in self.products}
        start = datetime(2024, 1, 1, tzinfo=UTC)
        self.events: list[Interaction] = []
        for u in range(n_users):
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            pool = [p for p in self.products if p.attributes["colour"] == colour]
            for j, i in enumerate(rng.permutation(len(pool))[:5].tolist()):
                event = EventType.PURCHASE if j >= 2 else EventType.VIEW
                when = start + timedelta(hours=10 * u + j)
                self.events.append(Interaction(f"u{u}", pool[i].product_id, event, when))
        vectors = rng.normal(size=(len(self.products), 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.store = ProductIndex.build(self.products, vectors, AnnConfig(factory="Flat"))
