"""The blend at request time: features read off concat-fused vectors, and when it applies."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from newarrivals.indexer.catalog.schema import Catalog, EventType, Interaction, Product
from newarrivals.indexer.encoders.fusion import ConcatLayout, FusionConfig, fuse
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation.methods import EvalData, ProductVectors
from newarrivals.indexer.evaluation.protocol import split_catalog
from newarrivals.indexer.index.manifest import FORMAT_VERSION, IndexCounts, IndexManifest
from newarrivals.indexer.retrieval.users import UserVectorConfig
from newarrivals.ranker.blend import Blend
from newarrivals.ranker.serving.request import SERVING_RETRIEVAL, request_blend, request_features
from newarrivals.ranker.training.features import concat_vectors, feature_columns

CUTOFF = datetime(2024, 3, 1, tzinfo=UTC)
DT, DI = 6, 4


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _manifest(fusion: dict[str, Any] | None = None, image: bool = True) -> IndexManifest:
    record = {"model": "tiny", "runtime": "torch"}
    counts = dict.fromkeys(IndexCounts.__dataclass_fields__, 0)
    return IndexManifest.from_dict(
        {
            "format_version": FORMAT_VERSION,
            "version": "v1",
            "built_at": CUTOFF.isoformat(),
            "dim": DT + (DI if image else 0),
            "counts": counts,
            "encoders": {
                "text": {**record, "id": "text", "dim": DT},
                "image": {**record, "id": "image", "dim": DI, "pretrained": None, "trained": True}
                if image
                else None,
            },
            "fusion": fusion or FusionConfig().to_dict(),
            "ann": {},
            "device": "cpu",
            "config": {},
            "libraries": {},
            "stats": {},
        }
    )


def test_layout_reads_each_modality_back_out_of_the_fused_vector() -> None:
    rng = np.random.default_rng(0)
    text, image = _unit(rng, 5, DT), _unit(rng, 5, DI)
    has_text = np.array([True, True, False, True, True])
    has_image = np.array([True, False, True, True, True])
    fused = fuse(FusionConfig(), text, has_text, image, has_image)
    layout = ConcatLayout.from_manifest(_manifest())
    got = layout.split(fused)
    np.testing.assert_allclose(got["text"][0][has_text], text[has_text], atol=1e-6)
    np.testing.assert_allclose(got["image"][0][has_image], image[has_image], atol=1e-6)
    assert got["text"][1].tolist() == has_text.tolist()
    assert got["image"][1].tolist() == has_image.tolist()
    with pytest.raises(ConfigError, match="concat fusion"):
        ConcatLayout.from_manifest(_manifest({"mode": "sum"}))
    with pytest.raises(ConfigError, match="do not add up"):
        ConcatLayout.from_manifest(replace(_manifest(), dim=99))


def _eval_data() -> EvalData:
    """Every product has both modalities, so the serving index's user vector weighs each
    modality exactly as the evaluation's per-modality mean does."""
    rng = np.random.default_rng(3)
    products = {f"old{i}": Product(f"old{i}", title=f"old {i}") for i in range(30)}
    products |= {f"new{i}": Product(f"new{i}", title=f"new {i}") for i in range(30)}
    events = []
    for u in range(6):
        for j in range(4):
            when = CUTOFF - timedelta(days=20 - 3 * j)
            kind = (EventType.PURCHASE, EventType.VIEW)[j % 2]
            events.append(Interaction(f"u{u}", f"old{int(rng.integers(30))}", kind, when))
        events.append(
            Interaction(f"u{u}", f"new{int(rng.integers(30))}", EventType.PURCHASE, CUTOFF)
        )
    split = split_catalog(Catalog(list(products.values()), events), CUTOFF)
    ids = sorted(products)
    both = np.ones(len(ids), dtype=bool)
    vectors = {
        "text": ProductVectors(ids, _unit(rng, len(ids), DT), both),
        "image": ProductVectors(ids, _unit(rng, len(ids), DI), both),
    }
    return EvalData(split=split, products=products, vectors=vectors)


def test_request_features_are_the_evaluations_features_for_the_serving_retrieval() -> None:
    data = _eval_data()
    columns = feature_columns(data, SERVING_RETRIEVAL, data.vectors)
    fused = concat_vectors(data.vectors)
    layout = ConcatLayout.from_manifest(_manifest())
    config = UserVectorConfig()
    cold_rows = fused.rows(data.split.cold_ids)
    for u, user in enumerate(data.split.test_users):
        history = data.split.history[user]
        # The serving user vector: event weight times recency decay over fused vectors.
        weights = np.array(
            [
                config.event_weights[e.event]
                * 0.5 ** ((CUTOFF - e.timestamp).total_seconds() / 86400 / config.half_life_days)
                for e in history
            ]
        )
        rows = fused.rows([e.product_id for e in history])
        user_vec = weights @ fused.vectors[rows].astype(np.float64)
        user_vec /= np.linalg.norm(user_vec)
        candidates = fused.vectors[cold_rows]
        got = request_features(
            layout, candidates, candidates @ user_vec, fused.vectors[rows], user_vec
        )
        for name in ("retrieval", "text", "image", "text-mean", "image-mean"):
            np.testing.assert_allclose(got[name], columns[name][u], atol=1e-5, err_msg=name)


def test_missing_modalities_and_history_give_nan_not_a_score() -> None:
    rng = np.random.default_rng(1)
    layout = ConcatLayout.from_manifest(_manifest())
    text, image = _unit(rng, 3, DT), _unit(rng, 3, DI)
    cand = fuse(FusionConfig(), text, np.array([True, False, True]), image, np.ones(3, bool))
    # One recent product, photo only; a cold user (no vector).
    recent = fuse(FusionConfig(), _unit(rng, 1, DT), np.zeros(1, bool), _unit(rng, 1, DI), None)
    got = request_features(layout, cand, np.arange(3.0), recent, None)
    assert np.isnan(got["text"]).all()  # nothing recent has text
    assert np.isfinite(got["image"]).all()
    assert np.isnan(got["image-mean"]).all() and np.isnan(got["text-mean"]).all()
    none = request_features(layout, cand, np.arange(3.0), np.zeros((0, DT + DI)), None)
    assert np.isnan(none["image"]).all()
    with pytest.raises(ConfigError, match="retrieval scores"):
        request_features(layout, cand, np.arange(2.0), recent, None)


def _layout(fusion: dict[str, Any] | None = None, image: bool = True) -> ConcatLayout:
    return ConcatLayout.from_manifest(_manifest(fusion, image))


def _blend(retrieval: str = SERVING_RETRIEVAL, features: tuple[str, ...] = ()) -> Blend:
    names = features or ("ranker", "retrieval", "image", "text", "image-mean", "text-mean")
    return Blend(names, tuple(1.0 for _ in names), retrieval=retrieval)


def test_a_blend_applies_only_to_the_first_stage_and_index_it_was_fitted_for() -> None:
    applied, why = request_blend(_blend(), _layout())
    assert applied is not None and why == ""
    assert request_blend(None, _layout())[1].startswith("the ranker has no blend.json")
    _, why = request_blend(_blend("fused-late/max"), _layout())
    assert "fused-late/max" in why and "--retrieval fused-concat/mean" in why
    _, why = request_blend(_blend(), _layout({"mode": "concat", "image_weight": 1.0}))
    assert "weights" in why and "0.5" in why
    _, why = request_blend(_blend(), _layout(image=False))
    assert "image" in why and "cannot give" in why
    text_only = _blend(features=("ranker", "retrieval", "text", "text-mean"))
    assert request_blend(text_only, _layout(image=False))[0] is not None


def test_request_blend_orders_by_its_weighted_features() -> None:
    rng = np.random.default_rng(2)
    layout = ConcatLayout.from_manifest(_manifest())
    cand = fuse(FusionConfig(), _unit(rng, 8, DT), None, _unit(rng, 8, DI), None)
    recent = fuse(FusionConfig(), _unit(rng, 2, DT), None, _unit(rng, 2, DI), None)
    applied, _ = request_blend(
        Blend(("ranker", "retrieval", "image"), (0.0, 0.0, 1.0), retrieval=SERVING_RETRIEVAL),
        _layout(),
    )
    assert applied is not None
    scores = applied.score(rng.normal(size=8), cand, rng.normal(size=8), recent, None)
    image = request_features(layout, cand, np.zeros(8), recent, None)["image"]
    assert np.argsort(-scores).tolist() == np.argsort(-image).tolist()


def test_late_max_search_is_the_evaluations_fused_late_max_over_the_index() -> None:
    from newarrivals.indexer.index.ann import AnnConfig
    from newarrivals.indexer.index.filters import SearchFilter
    from newarrivals.indexer.index.store import ProductIndex
    from newarrivals.indexer.retrieval.search import late_max_search

    data = _eval_data()
    # Some products lack a modality, so the per-modality means and counts matter.
    text, image = data.vectors["text"], data.vectors["image"]
    no_photo = np.arange(len(image.present)) % 7 == 3
    no_text = np.arange(len(text.present)) % 5 == 1
    vectors = {
        "text": ProductVectors(text.product_ids, text.vectors, ~no_text),
        "image": ProductVectors(image.product_ids, image.vectors, ~no_photo | no_text),
    }
    data = EvalData(split=data.split, products=data.products, vectors=vectors)
    expected = feature_columns(data, "fused-late/max", vectors)["retrieval"]
    fused = concat_vectors(vectors)
    # The split's cold items are the ones launched on the cutoff; a launch filter keeps them.
    cold = list(data.split.cold_ids)
    old = CUTOFF - timedelta(days=90)
    products = [
        Product(p, title=p, launched_at=CUTOFF if p in cold else old) for p in fused.product_ids
    ]
    store = ProductIndex.build(products, fused.vectors, AnnConfig(factory="Flat"))
    layout = ConcatLayout.from_manifest(_manifest())
    cold_only = SearchFilter(launched_after=CUTOFF - timedelta(seconds=1))
    for u, user in enumerate(data.split.test_users):
        history = sorted({e.product_id for e in data.split.history[user]})
        got = late_max_search(store, layout, store.vectors_for(history), len(cold), cold_only)
        assert len(got) == len(cold)
        assert {c.product_id for c in got} <= set(cold)
        want = {pid: float(expected[u, i]) for i, pid in enumerate(cold)}
        for c in got:
            assert c.score == pytest.approx(want[c.product_id], abs=1e-5)
        assert [c.score for c in got] == sorted((c.score for c in got), reverse=True)
