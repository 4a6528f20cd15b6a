"""Contract suite for the vector-index backends, on seeded clustered data."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from newarrivals.indexer.arrays import F32Array, I64Array
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.ann import (
    AnnConfig,
    FaissIndex,
    VectorIndex,
    auto_factory,
    load_index,
    make_index,
)

N, DIM, K = 3000, 32, 10
FACTORIES = ["Flat", "HNSW16", "IVF16,Flat", "SQ8", "IVF16,PQ8"]
# recall@10 against exact Flat, measured on this data and rounded down with headroom.
RECALL_FLOOR = {"Flat": 1.0, "HNSW16": 0.9, "IVF16,Flat": 0.9, "SQ8": 0.9, "IVF16,PQ8": 0.35}


def _unit(x: npt.NDArray[np.floating]) -> F32Array:
    unit: F32Array = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return unit


def clustered(n: int, dim: int, seed: int, clusters: int = 24) -> F32Array:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    labels = rng.integers(0, clusters, size=n)
    return _unit(centres[labels] + 0.6 * rng.standard_normal((n, dim)))


@pytest.fixture(scope="module")
def data() -> F32Array:
    return clustered(N, DIM, seed=7)


@pytest.fixture(scope="module")
def queries(data: F32Array) -> F32Array:
    rng = np.random.default_rng(8)
    return _unit(data[rng.choice(N, 200, replace=False)] + 0.2 * rng.standard_normal((200, DIM)))


@pytest.fixture(scope="module")
def ids() -> I64Array:
    # Non-contiguous, non-zero-based ids: the backends must not assume ids == rows.
    return np.arange(N, dtype=np.int64) * 3 + 11


def config_for(factory: str) -> AnnConfig:
    return AnnConfig(factory=factory, nprobe=8, ef_search=64, seed=1)


def built(factory: str, data: F32Array, ids: I64Array) -> VectorIndex:
    index = make_index(config_for(factory), DIM)
    index.build(data, ids)
    return index


def recall(found: I64Array, truth: I64Array) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


@pytest.fixture(scope="module")
def exact_truth(data: F32Array, queries: F32Array, ids: I64Array) -> I64Array:
    return built("Flat", data, ids).search(queries, K)[1]


@pytest.fixture(scope="module")
def saved(
    tmp_path_factory: pytest.TempPathFactory, data: F32Array, ids: I64Array
) -> dict[str, Path]:
    """Each backend built once (PQ training dominates the suite) and saved."""
    folder = tmp_path_factory.mktemp("built")
    paths = {}
    for factory in FACTORIES:
        paths[factory] = folder / f"{factory.replace(',', '_')}.faiss"
        built(factory, data, ids).save(paths[factory])
    return paths


def fresh(factory: str, saved: dict[str, Path]) -> VectorIndex:
    """A private copy of the prebuilt index (loading also exercises load)."""
    return load_index(saved[factory], config_for(factory))


@pytest.mark.parametrize("factory", FACTORIES)
class TestContract:
    def test_build_counts_every_vector(
        self, factory: str, saved: dict[str, Path], data: F32Array, ids: I64Array
    ) -> None:
        index = fresh(factory, saved)
        assert len(index) == N
        assert np.array_equal(index.ids(), ids)
        assert index.dim == DIM

    def test_recall_against_exact(
        self,
        factory: str,
        saved: dict[str, Path],
        data: F32Array,
        ids: I64Array,
        queries: F32Array,
        exact_truth: I64Array,
    ) -> None:
        scores, found = fresh(factory, saved).search(queries, K)
        assert found.shape == scores.shape == (queries.shape[0], K)
        assert recall(found, exact_truth) >= RECALL_FLOOR[factory]
        # Scores come best first.
        assert np.all(np.diff(scores, axis=1) <= 1e-5)

    def test_stored_vector_finds_itself(
        self, factory: str, saved: dict[str, Path], data: F32Array, ids: I64Array
    ) -> None:
        _, found = fresh(factory, saved).search(data[:200], K)
        top1 = np.mean(found[:, 0] == ids[:200])
        in_top10 = np.mean((found == ids[:200, None]).any(axis=1))
        if factory == "Flat":
            assert top1 == 1.0
        else:
            assert in_top10 >= (0.6 if "PQ" in factory else 0.95)

    def test_removed_ids_never_come_back(
        self, factory: str, saved: dict[str, Path], data: F32Array, ids: I64Array, tmp_path: Path
    ) -> None:
        index = fresh(factory, saved)
        gone = ids[::6]
        assert index.remove(gone) == gone.size
        assert index.remove(gone) == 0  # already gone
        assert index.remove(np.array([10**9], dtype=np.int64)) == 0  # never there
        assert len(index) == N - gone.size
        _, found = index.search(data[::6][:300], 50)
        assert not np.isin(found, gone).any()
        index.save(tmp_path / "index.faiss")
        loaded = load_index(tmp_path / "index.faiss", index.config)
        assert len(loaded) == N - gone.size
        _, found_again = loaded.search(data[::6][:300], 50)
        assert not np.isin(found_again, gone).any()

    def test_save_load_round_trip(
        self,
        factory: str,
        saved: dict[str, Path],
        data: F32Array,
        ids: I64Array,
        queries: F32Array,
        tmp_path: Path,
    ) -> None:
        index = fresh(factory, saved)
        index.remove(ids[:100])
        index.add(data[:50], np.arange(50, dtype=np.int64) + 10**6)
        path = tmp_path / "index.faiss"
        index.save(path)
        loaded = load_index(path, index.config)
        assert len(loaded) == len(index) == N - 50
        assert np.array_equal(loaded.ids(), index.ids())
        assert loaded.tombstones == index.tombstones
        before = index.search(queries, K)
        after = loaded.search(queries, K)
        assert np.array_equal(before[1], after[1])
        np.testing.assert_allclose(before[0], after[0], rtol=1e-5)

    def test_allowed_restricts_results(
        self,
        factory: str,
        saved: dict[str, Path],
        data: F32Array,
        ids: I64Array,
        queries: F32Array,
    ) -> None:
        index = fresh(factory, saved)
        rng = np.random.default_rng(3)
        allowed = np.sort(rng.choice(ids, size=600, replace=False))
        _, found = index.search(queries, K, allowed=allowed)
        valid = found[found >= 0]
        assert np.isin(valid, allowed).all()
        if factory == "Flat":
            assert (found >= 0).all()
            # Exact filtered search == exact search over the allowed vectors.
            sub = data[np.isin(ids, allowed)]
            expect = allowed[np.argsort(-(queries @ sub.T), axis=1)[:, :K]]
            assert np.array_equal(found, expect)

    def test_upsert_replaces_vector(
        self, factory: str, saved: dict[str, Path], data: F32Array, ids: I64Array
    ) -> None:
        index = fresh(factory, saved)
        target = int(ids[5])
        with pytest.raises(ValueError, match=str(target)):
            index.add(data[100:101], np.array([target]))
        assert index.remove(np.array([target])) == 1
        index.add(data[2000:2001], np.array([target]))  # same id, new vector
        assert len(index) == N
        _, found = index.search(data[2000:2001], 2)
        assert target in found[0].tolist()
        _, near_old = index.search(data[5:6], K)
        assert (near_old[0] == target).sum() <= 1

    def test_empty_allowed_and_bad_arguments(
        self, factory: str, saved: dict[str, Path], data: F32Array, ids: I64Array
    ) -> None:
        index = fresh(factory, saved)
        scores, found = index.search(data[:3], 4, allowed=np.empty(0, dtype=np.int64))
        assert (found == -1).all() and np.isneginf(scores).all()
        with pytest.raises(ValueError, match="sorted"):
            index.search(data[:3], 4, allowed=np.array([5, 2], dtype=np.int64))
        with pytest.raises(ValueError, match=r"\(n, 32\)"):
            index.search(data[0], 4)
        with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
            index.search(data[:3], 0)
        with pytest.raises(ValueError, match="non-negative"):
            index.add(data[:1], np.array([-4]))


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat"])
def test_allowed_with_huge_ids_uses_batch_selector(factory: str, data: F32Array) -> None:
    big = np.arange(N, dtype=np.int64) + 2**40  # beyond the bitmap limit
    index = built(factory, data, big)
    allowed = big[100:400]
    _, found = index.search(data[100:110], K, allowed=allowed)
    assert np.isin(found[found >= 0], allowed).all()
    assert (found >= 0).all()


def test_hnsw_removal_uses_tombstones(data: F32Array, ids: I64Array, tmp_path: Path) -> None:
    index = built("HNSW16", data, ids)
    assert isinstance(index, FaissIndex)
    index.remove(ids[:10])
    assert index.tombstones == 10
    assert len(index) == N - 10
    assert index.faiss_index.ntotal == N  # the graph still holds them
    index.save(tmp_path / "h.faiss")
    assert load_index(tmp_path / "h.faiss", index.config).tombstones == 10
    index.build(data, ids)  # a rebuild drops them
    assert index.tombstones == 0


def test_ivf_with_too_few_vectors_names_both_numbers(data: F32Array, ids: I64Array) -> None:
    index = make_index(AnnConfig(factory="IVF1024,Flat"), DIM)
    with pytest.raises(ConfigError, match=r"39936.*3000.*'Flat'"):
        index.build(data, ids)


def test_train_size_samples(data: F32Array, ids: I64Array) -> None:
    index = make_index(AnnConfig(factory="IVF16,Flat", train_size=700, nprobe=16), DIM)
    index.build(data, ids)
    assert len(index) == N
    with pytest.raises(ConfigError, match=r"624.*500"):
        make_index(AnnConfig(factory="IVF16,Flat", train_size=500), DIM).build(data, ids)


def test_add_before_build_on_trained_index_needs_build(data: F32Array) -> None:
    index = make_index(AnnConfig(factory="IVF16,Flat"), DIM)
    with pytest.raises(ConfigError, match="needs training"):
        index.add(data[:10], np.arange(10, dtype=np.int64))
    flat = make_index(AnnConfig(), DIM)
    flat.add(data[:10], np.arange(10, dtype=np.int64))  # Flat needs no training
    assert len(flat) == 10


def test_appended_and_interleaved_adds_keep_ids_exact(data: F32Array) -> None:
    index = make_index(AnnConfig(), DIM)
    index.add(data[:10], np.arange(10, dtype=np.int64))
    index.add(data[10:20], np.arange(19, 9, -1, dtype=np.int64))  # above all: appended
    with pytest.raises(ValueError, match="already in the index"):
        index.add(data[:2], np.array([25, 15], dtype=np.int64))  # one clash, not appended
    index.remove(np.array([3, 4], dtype=np.int64))
    index.add(data[3:5], np.array([4, 3], dtype=np.int64))  # below the top: merged
    assert index.ids().tolist() == list(range(20))
    _, got = index.search(data[15:16], 1)
    assert got[0, 0] == 14  # row 15 was added under id 14 (the reversed batch)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factory": ""}, "factory must be"),
        ({"factory": "IDMap,Flat"}, "IDMap"),
        ({"nprobe": 0}, "nprobe must be a positive integer, got 0"),
        ({"ef_search": -3}, "ef_search must be a positive integer, got -3"),
        ({"train_size": 0}, "train_size must be a positive integer or None"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"factory": "HNSW32", "use_gpu": True}, "no GPU implementation"),
        ({"factory": "SQ8", "use_gpu": True}, "'SQ8' has no GPU implementation"),
        ({"backend": "annoy"}, r"\['faiss'\].*'annoy'"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AnnConfig(**kwargs)  # type: ignore[arg-type]


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = AnnConfig(factory="IVF64,SQ8", nprobe=4, train_size=5000)
    assert AnnConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="nprob"):
        AnnConfig.from_dict({"nprob": 3})


def test_bad_factory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'IVF16,PQ7'.*dim=32"):
        make_index(AnnConfig(factory="IVF16,PQ7"), DIM)
    with pytest.raises(ConfigError, match="Bogus"):
        make_index(AnnConfig(factory="Bogus"), DIM)


def test_use_gpu_without_gpu_is_refused() -> None:
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="use_gpu=False"):
        make_index(AnnConfig(use_gpu=True), DIM)


def test_auto_factory() -> None:
    assert auto_factory(0) == "Flat"
    assert auto_factory(49_999) == "Flat"
    assert auto_factory(50_000) == "IVF1024,Flat"
    assert auto_factory(1_000_000) == "IVF4096,Flat"
    for n in (50_000, 200_000, 5_000_000, 10**9):
        nlist = int(auto_factory(n).removeprefix("IVF").split(",")[0])
        assert 39 * nlist <= n
    with pytest.raises(ConfigError, match="-1"):
        auto_factory(-1)


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs a CUDA GPU and faiss-gpu")
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_gpu_matches_cpu(
    factory: str, data: F32Array, ids: I64Array, queries: F32Array, tmp_path: Path
) -> None:
    cpu = built(factory, data, ids)
    gpu = make_index(AnnConfig(factory=factory, nprobe=8, seed=1, use_gpu=True), DIM)
    gpu.build(data, ids)
    cpu_ids = cpu.search(queries, K)[1]
    gpu_ids = gpu.search(queries, K)[1]
    assert recall(gpu_ids, cpu_ids) >= 0.99
    allowed = np.sort(ids[::7])
    filtered = gpu.search(queries, K, allowed=allowed)[1]
    assert np.isin(filtered[filtered >= 0], allowed).all()
    assert recall(filtered, cpu.search(queries, K, allowed=allowed)[1]) >= 0.95
    gpu.remove(ids[:100])
    assert not np.isin(gpu.search(data[:100], K)[1], ids[:100]).any()
    gpu.save(tmp_path / "g.faiss")  # CPU form
    assert len(load_index(tmp_path / "g.faiss", cpu.config)) == N - 100
