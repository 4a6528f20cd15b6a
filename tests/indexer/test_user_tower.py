"""The trained user tower against the mean-vector baseline, on a synthetic world with known
tastes; its artifact, incremental updates, the cold-user fallback, and config checks.

Product vectors are normalised one-hot attribute encodings of the synthetic products: cheap,
deterministic, and they carry exactly the attributes the shoppers' tastes are defined over.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from newarrivals.indexer import ConfigError, EventType, IndexIntegrityError, Interaction
from newarrivals.indexer.catalog.synth import (
    ATTRIBUTE_VALUES,
    SynthConfig,
    SyntheticCatalog,
    generate,
)
from newarrivals.indexer.index.ann import AnnConfig
from newarrivals.indexer.index.filters import SearchFilter
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.retrieval.search import (
    PopularFallback,
    PopularFallbackConfig,
    recommend_for_user,
)
from newarrivals.indexer.retrieval.users import UserVectors
from newarrivals.indexer.towers.user import UserTower
from newarrivals.indexer.towers.user_config import MANIFEST_FILE, UserTowerConfig
from newarrivals.indexer.towers.user_data import ArrayProductVectors
from newarrivals.indexer.towers.user_history import UserHistoryStore
from newarrivals.indexer.towers.user_training import train_user_tower

K = 10


@dataclass(frozen=True)
class World:
    synth: SyntheticCatalog
    ids: list[str]
    vectors: np.ndarray
    pre: list[Interaction]
    store: ProductIndex


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Small GRUs on a shared 2-core machine are several times slower with 2 threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _one_hot(synth: SyntheticCatalog) -> np.ndarray:
    columns = {
        (a, v): i for i, (a, v) in enumerate((a, v) for a, vs in ATTRIBUTE_VALUES for v in vs)
    }
    x = np.zeros((len(synth.catalog.products), len(columns)), dtype=np.float32)
    for i, p in enumerate(synth.catalog.products):
        for a, v in p.attributes.items():
            x[i, columns[(a, v)]] = 1.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@pytest.fixture(scope="module")
def world() -> World:
    synth = generate(SynthConfig(n_products=400, n_users=150, seed=3))
    vectors = _one_hot(synth)
    ids = [p.product_id for p in synth.catalog.products]
    pre = [e for e in synth.catalog.interactions if e.timestamp < synth.cutoff]
    store = ProductIndex.build(synth.catalog.products, vectors, AnnConfig(factory="Flat"))
    return World(synth, ids, vectors, pre, store)


def _config(**overrides: Any) -> UserTowerConfig:
    base: dict[str, Any] = {
        "hidden_size": 32,
        "epochs": 4,
        "patience": 2,
        "batch_size": 128,
        "random_negatives": 64,
        "device": "cpu",
        "seed": 0,
    }
    return UserTowerConfig(**(base | overrides))


@pytest.fixture(scope="module")
def trained(world: World) -> tuple[UserTower, dict[str, Any]]:
    # Only pre-cutoff events: the new arrivals never appear in training.
    return train_user_tower(world.pre, world.ids, world.vectors, _config(), progress=False)


def _recall(scores: np.ndarray, candidates: list[str], relevant: set[str]) -> float:
    top = {candidates[j] for j in np.argsort(-scores, kind="stable")[:K]}
    return len(top & relevant) / min(K, len(relevant))


def test_tower_beats_or_matches_mean_baseline_on_new_arrivals(
    world: World, trained: tuple[UserTower, dict[str, Any]]
) -> None:
    tower, report = trained
    cutoff = world.synth.cutoff
    new = sorted(set(world.synth.new_arrival_ids))
    assert not {e.product_id for e in world.pre} & set(new)  # unseen in training
    future: dict[str, set[str]] = {}
    for e in world.synth.catalog.interactions:
        if e.timestamp >= cutoff and e.product_id in set(new):
            future.setdefault(e.user_id, set()).add(e.product_id)
    users, vecs = tower.user_vectors(world.pre, world.ids, world.vectors, now=cutoff)
    row = {u: i for i, u in enumerate(users)}
    baseline = UserVectors(world.store)
    baseline.update_many(world.pre)
    new_vecs = world.store.vectors_for(new)
    ours, theirs = [], []
    for user, items in sorted(future.items()):
        base_vec = baseline.vector(user)
        if user not in row or base_vec is None:
            continue
        ours.append(_recall(new_vecs @ vecs[row[user]], new, items))
        theirs.append(_recall(new_vecs @ base_vec, new, items))
    a, b = np.asarray(ours), np.asarray(theirs)
    diff = a - b
    # Noise margin: two standard errors of the paired per-user difference.
    margin = 2.0 * diff.std(ddof=1) / np.sqrt(len(diff))
    print(
        f"\nrecall@{K} on new arrivals over {len(a)} users: tower {a.mean():.4f}, "
        f"mean baseline {b.mean():.4f}, diff {diff.mean():+.4f}, 2 SE {margin:.4f}; "
        f"valid recall {report['valid_recall']:.4f} vs {report['valid_recall_baseline']:.4f}"
    )
    assert len(a) >= 80
    assert a.mean() >= b.mean() - margin - 1e-9, (a.mean(), b.mean(), margin)
    # A random ranking of the new arrivals would score about K / len(new).
    assert a.mean() > 3 * K / len(new)
    # Early stopping keeps the best validation epoch, and epoch 0 is the baseline.
    assert report["valid_recall"] >= report["valid_recall_baseline"]
    assert report["n_valid_users"] > 0 and report["n_train_examples"] > 0
    assert json.dumps(report)  # JSON-ready


def test_save_load_round_trip_and_dim_checks(
    world: World, trained: tuple[UserTower, dict[str, Any]], tmp_path: Path
) -> None:
    tower, _ = trained
    out = tower.save(tmp_path / "tower")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["dim"] == world.vectors.shape[1] and "torch" in manifest["library_versions"]
    loaded = UserTower.load(out, device="cpu", expected_dim=world.vectors.shape[1])
    assert loaded.config == tower.config
    u1, v1 = tower.user_vectors(world.pre, world.ids, world.vectors)
    u2, v2 = loaded.user_vectors(world.pre, world.ids, world.vectors)
    assert u1 == u2
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, rtol=1e-5)

    dim = world.vectors.shape[1]
    with pytest.raises(IndexIntegrityError, match=rf"{dim}-dim.*\b384-dim"):
        UserTower.load(out, expected_dim=384)
    with pytest.raises(IndexIntegrityError, match=rf"{dim}-dim.*\b{dim + 1}-dim"):
        loaded.user_vectors(world.pre, world.ids, np.ones((len(world.ids), dim + 1)))
    with pytest.raises(IndexIntegrityError, match="missing"):
        UserTower.load(tmp_path / "nowhere")


def test_one_event_updates_only_that_user(
    world: World, trained: tuple[UserTower, dict[str, Any]]
) -> None:
    tower, _ = trained
    products = ArrayProductVectors(world.ids, world.vectors)
    users = UserHistoryStore(tower, products)
    assert users.update_many(world.pre) == len(world.pre)
    before = {u: users.vector(u) for u in users.user_ids()}
    user = sorted(before)[0]
    last = users.state(user).events[-1]  # type: ignore[union-attr]
    event = Interaction(
        user,
        world.synth.new_arrival_ids[0],
        EventType.PURCHASE,
        last.timestamp + timedelta(hours=1),
    )
    assert users.update(event)
    for u, vec in before.items():
        if u == user:
            assert not np.allclose(users.vector(u), vec)  # type: ignore[arg-type]
        else:
            assert users.vector(u) is vec  # untouched, not even recomputed
    state = users.state(user)
    assert state is not None and len(state.events) <= tower.config.max_history
    assert event.product_id in state.purchased
    # The incremental vector equals a from-scratch one over the full history.
    full = [e for e in world.pre if e.user_id == user] + [event]
    np.testing.assert_allclose(
        users.vector(user),  # type: ignore[arg-type]
        tower.vector_for(full, world.store),  # type: ignore[arg-type]
        rtol=1e-5,
        atol=1e-6,
    )
    assert not users.update(Interaction(user, "no-such-product", EventType.VIEW, event.timestamp))


def test_cold_user_fallback_is_flagged_and_filtered(
    world: World, trained: tuple[UserTower, dict[str, Any]]
) -> None:
    tower, _ = trained
    cutoff = world.synth.cutoff
    users = UserHistoryStore(tower, world.store)
    users.update_many(world.pre)
    fallback = PopularFallback.fit(world.store, world.pre, PopularFallbackConfig(window_days=14))
    assert fallback.product_ids and "popular in the 14 days" in fallback.rule
    assert abs(float(np.linalg.norm(fallback.vector)) - 1.0) < 1e-5

    new_only = SearchFilter(launched_after=cutoff)
    cold = recommend_for_user(world.store, users, "never-seen", K, new_only, fallback=fallback)
    assert cold.fallback and "cold user" in cold.reason and len(cold.candidates) == K
    assert {c.product_id for c in cold.candidates} <= set(world.synth.new_arrival_ids)
    scores = [c.score for c in cold.candidates]
    assert scores == sorted(scores, reverse=True)

    cheap = SearchFilter(max_price=30.0)
    cold_cheap = recommend_for_user(world.store, users, "never-seen", K, cheap, fallback=fallback)
    price = {p.product_id: p.price for p in world.synth.catalog.products}
    assert all((price[c.product_id] or 0) <= 30.0 for c in cold_cheap.candidates)

    warm_user = users.user_ids()[0]
    warm = recommend_for_user(world.store, users, warm_user, K, new_only, fallback=fallback)
    assert not warm.fallback and len(warm.candidates) == K
    # No interactions at all: the catalogue centroid, still a unit vector.
    empty = PopularFallback.fit(world.store, [])
    assert empty.product_ids == () and "catalogue centroid" in empty.rule


def test_transformer_trains_and_no_validation_split(world: World) -> None:
    cfg = _config(model="transformer", epochs=1, valid_fraction=0.0, num_heads=2, max_history=20)
    tower, report = train_user_tower(world.pre[:1500], world.ids, world.vectors, cfg)
    assert report["epochs"] == 1 and report["valid_recall"] is None
    users, vecs = tower.user_vectors(world.pre[:1500], world.ids, world.vectors)
    assert vecs.shape == (len(users), world.vectors.shape[1]) and np.all(np.isfinite(vecs))


def test_training_needs_targets(world: World) -> None:
    one_each = {e.user_id: e for e in world.pre}  # a single event per user: no target
    with pytest.raises(Exception, match="no training targets"):
        train_user_tower(list(one_each.values()), world.ids, world.vectors, _config())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_history": 0}, "max_history"),
        ({"model": "lstm"}, "model must be one of"),
        ({"batch_size": 1}, "batch_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"lr": -1.0}, "lr"),
        ({"temperature": 5.0}, "temperature"),
        ({"valid_fraction": 1.0}, "valid_fraction"),
        ({"target_events": ["like"]}, "target_events"),
        ({"target_events": []}, "target_events"),
        ({"event_weights": {"view": -1.0}}, "event weights"),
        ({"max_minutes": 0}, "max_minutes"),
        ({"model": "transformer", "hidden_size": 30, "num_heads": 4}, "divisible"),
        ({"learn_temperature": "yes"}, "learn_temperature"),
    ],
)
def test_config_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UserTowerConfig(**overrides)


def test_config_round_trip() -> None:
    cfg = UserTowerConfig(target_events=("cart", "purchase"), temperature=0.1)  # type: ignore[arg-type]
    assert cfg.target_events == (EventType.CART, EventType.PURCHASE)
    again = UserTowerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown UserTowerConfig fields"):
        UserTowerConfig.from_dict({"hidden": 3})
    with pytest.raises(ConfigError, match="top_n"):
        PopularFallbackConfig(top_n=0)
