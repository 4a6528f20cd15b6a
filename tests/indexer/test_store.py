"""ProductIndex: filters, exact fallbacks, upserts, persistence and integrity checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from newarrivals.indexer.arrays import F32Array
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.errors import (
    CatalogError,
    ConfigError,
    IndexIntegrityError,
    UnknownProductError,
)
from newarrivals.indexer.index.ann import AnnConfig
from newarrivals.indexer.index.filters import Candidate, SearchFilter
from newarrivals.indexer.index.store import ProductIndex

N, DIM, K = 3000, 32, 10
T0 = datetime(2024, 1, 1, tzinfo=UTC)
CATEGORIES = [
    ("Women", "Tops", "T-shirt"),
    ("Women", "Tops", "Blouse"),
    ("Women", "Topshop"),  # shares a string prefix with "Women > Tops", not a segment
    ("Women", "Shoes", "Sneakers"),
    ("Men", "Tops", "T-shirt"),
    ("Men", "Trousers"),
    ("Kids",),
    (),
]

Predicate = Callable[[Product], bool]


def make_catalogue(n: int, seed: int) -> tuple[list[Product], F32Array]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    vectors = centres[rng.integers(0, 20, n)] + 0.6 * rng.standard_normal((n, DIM))
    products = []
    for i in range(n):
        price = None if i % 17 == 0 else float(rng.integers(5, 200))
        launched = None if i % 13 == 0 else T0 + timedelta(days=int(rng.integers(0, 365)))
        products.append(
            Product(
                f"sku-{i:05d}",
                title=f"product {i}",
                category=CATEGORIES[int(rng.integers(0, len(CATEGORIES)))],
                price=price,
                launched_at=launched,
                available=i % 11 != 0,
            )
        )
    return products, vectors.astype(np.float32)


@pytest.fixture(scope="module")
def catalogue() -> tuple[list[Product], F32Array]:
    return make_catalogue(N, seed=3)


@pytest.fixture(scope="module")
def queries() -> F32Array:
    rng = np.random.default_rng(4)
    q = rng.standard_normal((40, DIM)).astype(np.float32)
    unit: F32Array = q / np.linalg.norm(q, axis=1, keepdims=True)
    return unit


def build(
    catalogue: tuple[list[Product], F32Array], factory: str = "Flat", **kwargs: object
) -> ProductIndex:
    products, vectors = catalogue
    config = AnnConfig(factory=factory, nprobe=4, ef_search=32)
    return ProductIndex.build(products, vectors, config, **kwargs)  # type: ignore[arg-type]


def brute_force(
    catalogue: tuple[list[Product], F32Array], q: F32Array, k: int, keep: Predicate
) -> list[list[str]]:
    """Exact answer computed independently of ProductIndex."""
    products, vectors = catalogue
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = np.array([i for i, p in enumerate(products) if keep(p)], dtype=np.int64)
    if rows.size == 0:
        return [[] for _ in q]
    scores = q @ unit[rows].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[products[rows[j]].product_id for j in row] for row in order]


def ids_of(results: list[list[Candidate]]) -> list[list[str]]:
    return [[c.product_id for c in row] for row in results]


def category(p: Product) -> str:
    return " > ".join(p.category).lower()


FILTERS: dict[str, tuple[SearchFilter, Predicate]] = {
    "category": (
        SearchFilter(category="WOMEN > tops", available_only=False),
        lambda p: category(p).startswith("women > tops >"),
    ),
    "category_slash": (
        SearchFilter(category="men/tops/t-shirt", available_only=False),
        lambda p: category(p) == "men > tops > t-shirt",
    ),
    "price": (
        SearchFilter(min_price=50, max_price=80, available_only=False),
        lambda p: p.price is not None and 50 <= p.price <= 80,
    ),
    "min_price_only": (
        SearchFilter(min_price=150, available_only=False),
        lambda p: p.price is not None and p.price >= 150,
    ),
    "launched_after": (
        SearchFilter(launched_after=T0 + timedelta(days=300), available_only=False),
        lambda p: p.launched_at is not None and p.launched_at > T0 + timedelta(days=300),
    ),
    "available_only": (SearchFilter(), lambda p: p.available),
    "everything": (SearchFilter(available_only=False), lambda p: True),
    "exclude_ids": (
        SearchFilter(exclude_ids=frozenset({f"sku-{i:05d}" for i in range(0, N, 2)} | {"nope"})),
        lambda p: p.available and int(p.product_id[4:]) % 2 == 1,
    ),
    "combined": (
        SearchFilter(
            category="Women",
            max_price=100,
            launched_after=T0 + timedelta(days=100),
            exclude_ids=frozenset({"sku-00001", "sku-00002"}),
        ),
        lambda p: (
            category(p).startswith("women")
            and p.price is not None
            and p.price <= 100
            and p.launched_at is not None
            and p.launched_at > T0 + timedelta(days=100)
            and p.available
            and p.product_id not in {"sku-00001", "sku-00002"}
        ),
    ),
}


@pytest.fixture(scope="module")
def flat(catalogue: tuple[list[Product], F32Array]) -> ProductIndex:
    # exact thresholds 0: every filtered search goes through the FAISS selector path.
    return build(catalogue, exact_below=0, exact_fraction=0.0)


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_each_filter_matches_brute_force(
    name: str,
    flat: ProductIndex,
    catalogue: tuple[list[Product], F32Array],
    queries: F32Array,
) -> None:
    search_filter, keep = FILTERS[name]
    got = ids_of(flat.search(queries, K, search_filter))
    assert got == brute_force(catalogue, queries, K, keep)
    assert all(len(row) == K for row in got)


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_exact_subset_path_matches_brute_force(
    name: str, catalogue: tuple[list[Product], F32Array], queries: F32Array
) -> None:
    # exact_below above N: every filtered search is the exact subset product.
    store = build(catalogue, "IVF16,Flat", exact_below=N + 1)
    search_filter, keep = FILTERS[name]
    got = ids_of(store.search(queries, K, search_filter))
    if name in {"available_only", "everything"}:
        # Unfiltered (or nearly) searches still go through the ANN index.
        assert all(len(row) == K for row in got)
    else:
        assert got == brute_force(catalogue, queries, K, keep)


def test_category_prefix_respects_segments(flat: ProductIndex) -> None:
    hits = flat.search(np.ones(DIM, dtype=np.float32), 50, SearchFilter(category="women > top"))
    assert hits == [[]]  # "Top" is not a segment of "Tops" or "Topshop"
    shop = flat.search(np.ones(DIM, dtype=np.float32), 5, SearchFilter(category="Women > Topshop"))
    assert len(shop[0]) == 5


@pytest.mark.parametrize("factory", ["HNSW16", "IVF16,Flat"])
def test_tight_filter_still_returns_k(
    factory: str, catalogue: tuple[list[Product], F32Array], queries: F32Array
) -> None:
    # Force the ANN path (exact thresholds 0) with a 1-list probe / tiny beam: under a ~3%
    # filter the approximate answer comes back short and the exact fallback must fill it.
    products, vectors = catalogue
    config = AnnConfig(factory=factory, nprobe=1, ef_search=16)
    store = ProductIndex.build(products, vectors, config, exact_below=0, exact_fraction=0.0)
    tight = SearchFilter(category="Kids", min_price=150, available_only=False)

    def keep(p: Product) -> bool:
        return category(p) == "kids" and p.price is not None and p.price >= 150

    allowed = np.array([i for i, p in enumerate(products) if keep(p)], dtype=np.int64)
    assert K < allowed.size < 0.05 * N
    got = ids_of(store.search(queries, K, tight))
    assert all(len(row) == K for row in got)
    assert all(keep(products[int(pid[4:])]) for row in got for pid in row)
    # Rows where the backend alone came back short were redone exactly.
    _, raw = store.ann.search(queries, K, allowed=allowed)
    short = np.flatnonzero((raw < 0).any(axis=1))
    if factory.startswith("IVF"):
        assert short.size > 0  # the scenario this test is about really happens
    want = brute_force(catalogue, queries, K, keep)
    assert all(got[i] == want[i] for i in short.tolist())


def _spy_post_filter(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record whether each post-filter attempt answered (True) or fell back (False)."""
    answered: list[bool] = []
    real = ProductIndex._post_filtered

    def spy(self: ProductIndex, *args: object) -> object:
        out = real(self, *args)  # type: ignore[arg-type]
        answered.append(out is not None)
        return out

    monkeypatch.setattr(ProductIndex, "_post_filtered", spy)
    return answered


def test_broad_filter_post_filters_like_the_selector_path(
    catalogue: tuple[list[Product], F32Array],
    queries: F32Array,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Most products pass (available, minus a few bought): the store searches unfiltered
    # and drops refused products; the answer must be the IVF selector search's.
    products, vectors = catalogue
    config = AnnConfig(factory="IVF16,Flat", nprobe=4)
    store = ProductIndex.build(products, vectors, config, exact_below=0, exact_fraction=0.0)
    bought = frozenset(p.product_id for p in products[1:400:7])
    broad = SearchFilter(exclude_ids=bought)
    allowed = np.array(
        [i for i, p in enumerate(products) if p.available and p.product_id not in bought],
        dtype=np.int64,
    )
    assert allowed.size > 0.8 * N
    answered = _spy_post_filter(monkeypatch)
    got = store.search(queries, K, broad)
    assert answered == [True]
    scores, ids = store.ann.search(queries, K, allowed=allowed)
    assert ids_of(got) == [[products[int(i)].product_id for i in row] for row in ids]
    np.testing.assert_allclose([[c.score for c in row] for row in got], scores, rtol=1e-5)


def test_post_filter_that_comes_back_short_falls_back(
    catalogue: tuple[list[Product], F32Array],
    queries: F32Array,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Excluding each query's unfiltered top 60 leaves 98% of the index allowed, but
    # the over-fetched unfiltered candidates are all refused: the filtered search answers.
    flat = build(catalogue, exact_below=0, exact_fraction=0.0)
    q = queries[:1]
    top = {c.product_id for c in flat.search(q, 60, SearchFilter(available_only=False))[0]}
    flt = SearchFilter(exclude_ids=frozenset(top), available_only=False)
    answered = _spy_post_filter(monkeypatch)
    got = ids_of(flat.search(q, K, flt))
    assert answered == [False]
    assert got == brute_force(catalogue, q, K, lambda p: p.product_id not in top)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat"])
def test_fewer_than_k_only_when_fewer_pass(
    factory: str, catalogue: tuple[list[Product], F32Array], queries: F32Array
) -> None:
    store = build(catalogue, factory, exact_below=0, exact_fraction=0.0)
    few = SearchFilter(
        exclude_ids=frozenset(), category="Kids", min_price=198, available_only=False
    )
    passing = [p for p in catalogue[0] if category(p) == "kids" and (p.price or 0) >= 198]
    assert 0 < len(passing) < K
    got = store.search(queries, K, few)
    assert all(len(row) == len(passing) for row in got)
    none = SearchFilter(category="Nowhere")
    assert store.search(queries, K, none) == [[] for _ in range(len(queries))]


def test_scores_sorted_and_candidates_typed(flat: ProductIndex, queries: F32Array) -> None:
    for row in flat.search(queries, K):
        assert all(isinstance(c, Candidate) for c in row)
        scores = [c.score for c in row]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0001 <= s <= 1.0001 for s in scores)


def test_vectors_are_unit_copies(
    flat: ProductIndex, catalogue: tuple[list[Product], F32Array]
) -> None:
    v = flat.vector("sku-00001")
    raw = catalogue[1][1]
    np.testing.assert_allclose(v, raw / np.linalg.norm(raw), rtol=1e-5)
    v[:] = 0
    assert np.linalg.norm(flat.vector("sku-00001")) == pytest.approx(1.0, rel=1e-5)
    both = flat.vectors_for(["sku-00001", "sku-00003"])
    assert both.shape == (2, DIM)
    hit = flat.search(both[1], 1)[0][0]
    assert hit.product_id == "sku-00003" and hit.score == pytest.approx(1.0, rel=1e-5)
    assert flat.product_ids()[:2] == ["sku-00000", "sku-00001"]
    assert "sku-00001" in flat and "nope" not in flat and 3 not in flat
    assert len(flat) == N


def test_unknown_ids(flat: ProductIndex) -> None:
    with pytest.raises(UnknownProductError, match="'nope'"):
        flat.vector("nope")
    with pytest.raises(UnknownProductError, match=r"'x1', 'x2'.*missing_ok"):
        flat.remove(["x1", "sku-00001", "x2"])
    assert "sku-00001" in flat  # nothing removed when one id is unknown
    assert flat.remove(["x1"], missing_ok=True) == 0


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat"])
def test_remove_and_upsert(
    factory: str, catalogue: tuple[list[Product], F32Array], queries: F32Array
) -> None:
    products, vectors = catalogue
    store = build(catalogue, factory)
    gone = [p.product_id for p in products[:300]]
    assert store.remove(gone) == 300
    assert len(store) == N - 300 and gone[0] not in store
    everything = SearchFilter(available_only=False)
    for row in store.search(vectors[:300], K, everything):
        assert not {c.product_id for c in row} & set(gone)

    # Upsert: a known id is replaced (new vector, new price), a new id is added.
    old_int_ids = set(store.ann.ids().tolist())
    moved = replace(products[500], price=1.0)
    fresh = Product("sku-new", category=("Kids",), price=2.0)
    unique = -vectors[2001]  # no other product points this way
    store.add([moved, fresh], np.stack([vectors[2000], unique]))
    assert len(store) == N - 300 + 1
    np.testing.assert_allclose(
        store.vector(moved.product_id), vectors[2000] / np.linalg.norm(vectors[2000]), rtol=1e-5
    )
    new_int_ids = set(store.ann.ids().tolist())
    assert len(new_int_ids - old_int_ids) == 2  # fresh int ids, never reused
    assert max(new_int_ids) == N + 1
    cheap = store.search(vectors[2000], 5, SearchFilter(max_price=1.5, available_only=False))
    assert [c.product_id for c in cheap[0]] == [moved.product_id]
    top = store.search(unique, 1, everything)[0][0]
    assert top.product_id == "sku-new"


def test_hnsw_compacts_after_many_removals(catalogue: tuple[list[Product], F32Array]) -> None:
    products, vectors = catalogue
    store = build(catalogue, "HNSW16")
    store.remove([p.product_id for p in products[:500]])
    assert store.ann.tombstones == 500
    store.remove([p.product_id for p in products[500:1000]])  # 1000 / 3000 > 25%
    assert store.ann.tombstones == 0
    assert len(store.ann) == len(store) == N - 1000
    hit = store.search(vectors[1500], 1, SearchFilter(available_only=False))[0][0]
    assert hit.product_id == products[1500].product_id


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat"])
def test_save_load_round_trip(
    factory: str,
    catalogue: tuple[list[Product], F32Array],
    queries: F32Array,
    tmp_path: Path,
) -> None:
    products, vectors = catalogue
    store = build(catalogue, factory)
    store.remove([p.product_id for p in products[:100]])
    store.add([replace(products[200], price=3.0)], vectors[300:301])
    store.save(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "ann.json",
        "ids.json",
        "index.faiss",
        "meta.npz",
        "vectors.npy",
    ]
    loaded = ProductIndex.load(tmp_path)
    assert loaded.product_ids() == store.product_ids()
    assert loaded.config == store.config
    for _, (search_filter, _) in FILTERS.items():
        assert loaded.search(queries, K, search_filter) == store.search(queries, K, search_filter)
    # The id counter survives: the next upsert gets a never-used int id.
    loaded.add([Product("sku-later")], vectors[:1])
    assert int(loaded.ann.ids().max()) == N + 1


def corrupt_ids(directory: Path) -> None:
    ids = json.loads((directory / "ids.json").read_text())
    ids["product_ids"].pop()
    ids["int_ids"].pop()
    (directory / "ids.json").write_text(json.dumps(ids))


def truncate_vectors(directory: Path) -> None:
    vectors = np.load(directory / "vectors.npy")
    np.save(directory / "vectors.npy", vectors[:-1])


@pytest.mark.parametrize(
    ("damage", "numbers"),
    [(corrupt_ids, ("3000", "2999")), (truncate_vectors, ("2999", "3000"))],
)
def test_corrupted_directory_names_both_numbers(
    damage: Callable[[Path], None],
    numbers: tuple[str, str],
    flat: ProductIndex,
    tmp_path: Path,
) -> None:
    flat.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(IndexIntegrityError) as info:
        ProductIndex.load(tmp_path)
    message = str(info.value)
    assert all(n in message for n in numbers), message


def test_missing_file_and_dim_mismatch(flat: ProductIndex, tmp_path: Path) -> None:
    flat.save(tmp_path)
    np.save(tmp_path / "vectors.npy", np.zeros((N, DIM + 1), dtype=np.float32))
    with pytest.raises(IndexIntegrityError, match=f"{DIM + 1}.*{DIM}"):
        ProductIndex.load(tmp_path)
    (tmp_path / "meta.npz").unlink()
    with pytest.raises(IndexIntegrityError, match=r"meta\.npz is missing"):
        ProductIndex.load(tmp_path)


def test_build_rejects_bad_input(catalogue: tuple[list[Product], F32Array]) -> None:
    products, vectors = catalogue
    config = AnnConfig()
    with pytest.raises(CatalogError, match="'sku-00000'"):
        ProductIndex.build([products[0], products[0]], vectors[:2], config)
    zero = vectors[:2].copy()
    zero[1] = 0
    with pytest.raises(CatalogError, match=r"'sku-00001'.*zero"):
        ProductIndex.build(products[:2], zero, config)
    with pytest.raises(ValueError, match=r"\(3, 32\)"):
        ProductIndex.build(products[:3], vectors[:2], config)
    naive = replace(products[1], launched_at=datetime(2024, 1, 1))
    with pytest.raises(CatalogError, match="naive"):
        ProductIndex.build([naive], vectors[:1], config)


def test_bad_queries(flat: ProductIndex) -> None:
    with pytest.raises(ValueError, match=r"\(q, 32\)"):
        flat.search(np.ones((2, 5), dtype=np.float32), K)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        flat.search(np.ones(DIM, dtype=np.float32), 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_price": 50.0, "max_price": 10.0}, r"min_price \(50.0\).*max_price \(10.0\)"),
        ({"min_price": -1.0}, "min_price must be a finite number >= 0, got -1.0"),
        ({"max_price": float("nan")}, "max_price must be a finite number"),
        ({"launched_after": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"exclude_ids": "sku-1"}, "frozenset"),
        ({"category": " > "}, "non-empty path"),
    ],
)
def test_search_filter_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchFilter(**kwargs)  # type: ignore[arg-type]


def test_search_filter_freezes_exclude_ids() -> None:
    f = SearchFilter(exclude_ids={"a", "b"})  # type: ignore[arg-type]
    assert f.exclude_ids == frozenset({"a", "b"})
    assert SearchFilter(category=" Women / Tops ").category_prefix == "women > tops"
