"""The live-update path of ProductIndex that the service relies on: cheap, and still exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.index.ann import AnnConfig
from newarrivals.indexer.index.filters import SearchFilter
from newarrivals.indexer.index.store import ProductIndex


def _product(pid: str, rng: np.random.Generator) -> Product:
    return Product(
        pid,
        category=("A" if rng.random() < 0.5 else "B", "x"),
        price=float(rng.integers(0, 100)),
        available=bool(rng.random() < 0.9),
    )


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
def test_upserts_and_deletes_match_a_fresh_build(factory: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    dim = 12
    products = {f"p{i}": _product(f"p{i}", rng) for i in range(300)}
    vectors = {pid: rng.standard_normal(dim).astype(np.float32) for pid in products}
    store = ProductIndex.build(
        list(products.values()), np.stack(list(vectors.values())), AnnConfig(factory=factory)
    )
    for _ in range(500):
        if rng.random() < 0.55:
            pid = f"p{rng.integers(0, 400)}"
            products[pid] = _product(pid, rng)
            vectors[pid] = rng.standard_normal(dim).astype(np.float32)
            store.add([products[pid]], vectors[pid][None, :])
        else:
            pid = sorted(products)[rng.integers(0, len(products))]
            assert store.remove([pid]) == 1
            del products[pid], vectors[pid]
    fresh = ProductIndex.build(
        list(products.values()), np.stack(list(vectors.values())), AnnConfig(factory="Flat")
    )
    assert sorted(store.product_ids()) == sorted(fresh.product_ids()) and len(store) == len(fresh)
    queries = rng.standard_normal((6, dim)).astype(np.float32)
    for flt in (
        None,
        SearchFilter(category="A", max_price=60.0),
        SearchFilter(available_only=False),
    ):
        got, want = store.search(queries, 10, flt), fresh.search(queries, 10, flt)
        for g, w in zip(got, want, strict=True):
            if factory == "Flat":  # exact: the same answer
                assert [c.product_id for c in g] == [c.product_id for c in w]
            else:  # approximate backends: as many results, all allowed and live
                assert len(g) == len(w) and {c.product_id for c in g} <= set(products)
    # Dead rows are an in-memory detail: a saved store loads with its invariants intact.
    store.save(tmp_path / "s")
    loaded = ProductIndex.load(tmp_path / "s")
    assert sorted(loaded.product_ids()) == sorted(products)
    pid = sorted(products)[0]
    assert np.allclose(loaded.vector(pid), vectors[pid] / np.linalg.norm(vectors[pid]), atol=1e-6)


def test_appends_grow_the_buffers_geometrically() -> None:
    """An upsert must not copy every stored vector: buffers are reallocated O(log n) times."""
    rng = np.random.default_rng(0)
    dim = 8
    store = ProductIndex.build(
        [Product(f"p{i}") for i in range(1000)],
        rng.standard_normal((1000, dim)).astype(np.float32),
        AnnConfig(factory="Flat"),
    )
    last, reallocations = store._buffers["_vectors"], 0
    for i in range(2000):
        store.add([Product(f"n{i}")], rng.standard_normal((1, dim)).astype(np.float32))
        if i % 7 == 0:  # an upsert of an existing product: its row dies, a new one is added
            store.add([Product(f"p{i % 1000}")], rng.standard_normal((1, dim)).astype(np.float32))
        if store._buffers["_vectors"] is not last:
            last, reallocations = store._buffers["_vectors"], reallocations + 1
    assert len(store) == 3000
    # 1,000 -> 3,000 live rows (plus dead ones until compaction) in steps of a quarter: a
    # handful of copies, where copying on every change would be 2,286.
    assert reallocations <= 10
