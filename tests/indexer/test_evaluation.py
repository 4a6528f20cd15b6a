"""The evaluation: metrics against hand-computed values, the split, baselines, end to end."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from newarrivals.indexer import Catalog, ConfigError, EventType, Interaction, Product
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.synth import load_ground_truth
from newarrivals.indexer.evaluation import (
    AttributeAffinity,
    AttributeKeys,
    ColdStartSplit,
    EvalData,
    LateFusionMethod,
    MaxSimilarityMethod,
    MeanVectorMethod,
    MetricSpec,
    ProductVectors,
    RandomBaseline,
    SameProductRule,
    TypePopularity,
    UserTowerMethod,
    centre_vectors,
    fuse_vectors,
    hit_rate_at_k,
    hits_matrix,
    ndcg_at_k,
    parse_events,
    product_attribute,
    rank_items,
    recall_at_k,
    score_rankings,
    split_catalog,
    standard_error,
)
from newarrivals.service.cli import main

CUTOFF = datetime(2024, 3, 1, tzinfo=UTC)
LOG2_3 = math.log2(3)
LOG2_5 = math.log2(5)


def _at(days: float) -> datetime:
    return CUTOFF + timedelta(days=days)


def _ev(user: str, pid: str, days: float, event: EventType = EventType.PURCHASE) -> Interaction:
    return Interaction(user, pid, event, _at(days))


# ----------------------------------------------------------------------------- metrics


def test_recall_ndcg_hitrate_two_relevant_items_at_known_ranks() -> None:
    # Items 0 and 2 are relevant; the ranking puts them at ranks 2 and 4.
    ranking = np.array([[3, 0, 1, 2]], dtype=np.int64)
    hits = hits_matrix(ranking, [frozenset({0, 2})])
    assert hits.tolist() == [[False, True, False, True]]
    n_rel = np.array([2])
    assert recall_at_k(hits, n_rel, 1)[0] == 0.0
    assert recall_at_k(hits, n_rel, 2)[0] == 0.5
    assert recall_at_k(hits, n_rel, 4)[0] == 1.0
    # NDCG@2: DCG = 1/log2(3); ideal = 1 + 1/log2(3) (both relevant items fit in 2 slots).
    assert ndcg_at_k(hits, n_rel, 2)[0] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    # NDCG@4: DCG = 1/log2(3) + 1/log2(5).
    assert ndcg_at_k(hits, n_rel, 4)[0] == pytest.approx(
        (1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3)
    )
    assert hit_rate_at_k(hits, 1)[0] == 0.0
    assert hit_rate_at_k(hits, 2)[0] == 1.0


def test_ndcg_ideal_is_capped_at_k_and_k_beyond_the_list() -> None:
    # Three relevant items, K = 2, one hit at rank 1: ideal DCG counts only 2 slots.
    hits = hits_matrix(np.array([[5, 0, 1]]), [frozenset({5, 6, 7})])
    assert ndcg_at_k(hits, np.array([3]), 2)[0] == pytest.approx(1 / (1 + 1 / LOG2_3))
    assert recall_at_k(hits, np.array([3]), 2)[0] == pytest.approx(1 / 3)
    # K larger than the ranking: no error, the missing ranks count as misses.
    assert ndcg_at_k(hits, np.array([3]), 10)[0] == pytest.approx(1 / (1 + 1 / LOG2_3 + 0.5))


def test_rank_items_breaks_ties_at_random_but_seeded() -> None:
    scores = np.array([[0.0, 1.0, 1.0, 1.0, 1.0, np.nan, -np.inf, 0.5]])
    first = rank_items(scores, np.random.default_rng(3), 8)
    again = rank_items(scores, np.random.default_rng(3), 8)
    np.testing.assert_array_equal(first, again)
    # The four tied best items come first, then 0.5, then 0.0, then the unscorable two.
    assert set(first[0, :4].tolist()) == {1, 2, 3, 4}
    assert first[0, 4:6].tolist() == [7, 0]
    assert set(first[0, 6:].tolist()) == {5, 6}
    orders = {tuple(rank_items(scores, np.random.default_rng(s), 4)[0]) for s in range(20)}
    assert len(orders) > 1  # the tie order changes with the seed


def test_score_rankings_averages_over_seeds_and_users() -> None:
    # Two items that tie; item 0 is relevant: recall@1 per seed is 0 or 1.
    scores = np.zeros((1, 2))
    truth = [frozenset({0})]
    spec = MetricSpec(ks=(1, 2), hit_rate_ks=(1,))
    seeds = list(range(10))
    got = score_rankings(scores, truth, spec=spec, seeds=seeds).mean()["recall@1"]
    expected = np.mean([rank_items(scores, np.random.default_rng(s), 1)[0, 0] == 0 for s in seeds])
    assert got == pytest.approx(expected)
    assert 0.0 < got < 1.0
    # A perfect scorer is exact whatever the seed.
    per_user = score_rankings(
        np.array([[1.0, 0.0], [0.0, 1.0]]),
        [frozenset({0}), frozenset({1})],
        spec=spec,
        seeds=seeds,
    )
    assert per_user.mean() == {
        "recall@1": 1.0,
        "recall@2": 1.0,
        "ndcg@1": 1.0,
        "ndcg@2": 1.0,
        "hitrate@1": 1.0,
    }
    assert per_user.stderr()["recall@1"] == 0.0


def test_standard_error_and_spec_validation() -> None:
    assert standard_error(np.array([1.0, 3.0])) == pytest.approx(1.0)
    assert standard_error(np.array([2.0])) == 0.0
    with pytest.raises(ConfigError, match="ks"):
        MetricSpec(ks=(0, 10))
    with pytest.raises(ConfigError, match="event type 'like'"):
        parse_events("purchase,like")
    assert parse_events("purchase, cart") == (EventType.CART, EventType.PURCHASE)
    assert parse_events("all") == tuple(EventType)


# ----------------------------------------------------------------------------- split


def _tiny_catalog() -> Catalog:
    products = [
        Product("A-1", title="old blue dress", attributes={"code": "A", "type": "dress"}),
        Product("A-2", title="new red dress", attributes={"code": "A", "type": "dress"}),
        Product("B-1", title="new shirt", attributes={"code": "B", "type": "shirt"}),
        Product("C-1", title="launched, unseen", launched_at=_at(2)),
        Product("D-1", title="old, unseen", launched_at=_at(-30)),
        Product("E-1", title="no date, unseen"),
        Product("F-1", title="old shirt", attributes={"code": "F", "type": "shirt"}),
    ]
    interactions = [
        _ev("u1", "A-1", -10),
        _ev("u1", "A-2", 1),
        _ev("u1", "A-2", 3),  # a repeat purchase: truth is a set
        _ev("u1", "B-1", 2, EventType.VIEW),  # not a test event by default
        _ev("u2", "B-1", 1),  # u2 has no history: not a test user
        _ev("u3", "F-1", -5, EventType.VIEW),
        _ev("u3", "B-1", 4, EventType.CART),
        _ev("u3", "F-1", 5),  # F-1 is not cold
        _ev("u4", "F-1", -1),
        _ev("u4", "B-1", 0),  # exactly at the cutoff: test period
    ]
    return Catalog(products=products, interactions=interactions)


def test_split_cold_items_users_truth_and_same_product() -> None:
    split = split_catalog(
        _tiny_catalog(), "2024-03-01", same_product=SameProductRule("attribute:code")
    )
    assert split.cold_ids == ("A-2", "B-1", "C-1")
    assert [i.product_id for i in split.train] == ["A-1", "F-1", "F-1"]
    assert split.test_users == ("u1", "u4")
    assert split.truth == {"u1": frozenset({"A-2"}), "u4": frozenset({"B-1"})}
    assert split.n_test_events == 3 and split.n_truth_pairs == 2
    assert split.same_product_users == frozenset({"u1"})
    assert [i.product_id for i in split.history["u1"]] == ["A-1"]
    assert split.truth_indices() == [frozenset({0}), frozenset({1})]

    carts = split_catalog(_tiny_catalog(), CUTOFF, test_events=parse_events("purchase,cart"))
    assert carts.test_users == ("u1", "u3", "u4")
    assert carts.truth["u3"] == frozenset({"B-1"})
    assert carts.same_product_users == frozenset()  # no rule, no flag
    assert carts.summary()["test_events"] == ["cart", "purchase"]


def test_same_product_rules() -> None:
    assert SameProductRule("id-prefix:7").code(Product("0111565001")) == "0111565"
    assert SameProductRule("attribute:code").code(Product("x", attributes={"code": "7"})) == "7"
    assert SameProductRule().code(Product("x")) is None
    for bad in ("id-prefix:0", "attribute:", "colour"):
        with pytest.raises(ConfigError, match="same-product rule"):
            SameProductRule(bad)


# ----------------------------------------------------------------------------- baselines


def _baseline_data() -> EvalData:
    def p(pid: str, kind: str, colour: str, dept: str) -> Product:
        return Product(pid, attributes={"type": kind, "colour": colour, "department": dept})

    products = [
        p("h1", "dress", "red", "women"),
        p("h2", "dress", "blue", "women"),
        p("h3", "shirt", "red", "men"),
        p("h4", "shirt", "red", "men"),
        p("n1", "dress", "red", "kids"),  # cold
        p("n2", "shirt", "blue", "men"),  # cold
        Product("n3"),  # cold, no attributes
    ]
    interactions = [
        _ev("u1", "h1", -3),
        _ev("u1", "h2", -2),
        _ev("u1", "h2", -1, EventType.VIEW),  # not a purchase: ignored by both baselines
        _ev("u2", "h3", -3),
        _ev("v", "h4", -2),
        _ev("v", "h3", -1),
        _ev("u1", "n1", 1),
        _ev("u2", "n2", 1),
        _ev("v", "n3", 1, EventType.VIEW),
    ]
    split = split_catalog(Catalog(products=products, interactions=interactions), CUTOFF)
    return EvalData(split=split, products={x.product_id: x for x in products})


def test_popularity_and_affinity_hand_computed() -> None:
    data = _baseline_data()
    assert data.split.cold_ids == ("n1", "n2", "n3")
    assert data.split.test_users == ("u1", "u2")
    keys = AttributeKeys("type", "colour", "department")
    # Train purchases: dress x2 (h1, h2), shirt x3 (h3, h3, h4).
    np.testing.assert_array_equal(TypePopularity(keys).score(data), [[2, 3, 0], [2, 3, 0]])
    # u1 bought h1 (dress, red, women) and h2 (dress, blue, women):
    #   n1 (dress, red, kids): 2 * 1 + 1 * .5 + 0 = 2.5; n2 (shirt, blue, men): .5; n3: 0.
    # u2 bought h3 (shirt, red, men): n1: .5 (red); n2: 1 + .5 (men) = 1.5; n3: 0.
    np.testing.assert_allclose(AttributeAffinity(keys).score(data), [[2.5, 0.5, 0], [0.5, 1.5, 0]])
    assert not RandomBaseline().score(data).any()


def test_product_attribute_reads_category_levels() -> None:
    p = Product("p", category=("Ladieswear", "Garment Upper body", "Vest top"))
    assert product_attribute(p, "category[-1]") == "Vest top"
    assert product_attribute(p, "category[0]") == "Ladieswear"
    assert product_attribute(p, "category[5]") is None
    assert product_attribute(None, "type") is None


# ----------------------------------------------------------------------------- content


def _content_data() -> tuple[EvalData, ProductVectors]:
    # n2 and n3 are new arrivals nobody has touched yet: cold through their launch date.
    products = [Product("h1"), Product("h2")]
    products += [Product(pid, launched_at=_at(1)) for pid in ("n1", "n2", "n3")]
    interactions = [
        _ev("u", "h1", -40),  # old: decayed
        _ev("u", "h2", -1),
        _ev("u", "n1", 1),
    ]
    split = split_catalog(Catalog(products=products, interactions=interactions), CUTOFF)
    vectors = np.array(
        [[1, 0, 0], [0, 1, 0], [0.8, 0.6, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32
    )
    present = np.array([True, True, True, True, False])
    pv = ProductVectors([p.product_id for p in products], vectors, present)
    return EvalData(split, {p.product_id: p for p in products}), pv


def test_mean_and_max_similarity_methods() -> None:
    data, pv = _content_data()
    assert data.split.cold_ids == ("n1", "n2", "n3")
    mean = MeanVectorMethod("mean", pv).score(data)
    # The recent h2 dominates the decayed h1, so n2 (closer to h2) wins; n3 has no vector.
    assert mean[0, 1] > mean[0, 0] and mean[0, 2] == -np.inf
    best = MaxSimilarityMethod("max", pv).score(data)
    np.testing.assert_allclose(best[0, :2], [0.8, 0.8])
    late = LateFusionMethod("late", (MeanVectorMethod("m", pv), MaxSimilarityMethod("x", pv)))
    assert late.score(data)[0, 2] == -np.inf


def test_fusion_centres_each_modality_and_keeps_single_modality_rows() -> None:
    ids = ["a", "b", "c"]
    text = ProductVectors(ids, np.eye(3, dtype=np.float32), np.array([True, True, False]))
    image = ProductVectors(
        ids, np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32), np.array([1, 0, 1], bool)
    )
    fused = fuse_vectors(text, image, centre=False)
    assert fused.present.all()
    np.testing.assert_allclose(fused.vectors[1], [0, 1, 0])  # text only
    np.testing.assert_allclose(fused.vectors[2], [1, 0, 0])  # image only
    centred = centre_vectors(text)
    np.testing.assert_allclose(centred.vectors[:2].sum(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(centred.vectors[:2], axis=1), 1, rtol=1e-5)
    assert not centred.vectors[2].any()
    with pytest.raises(ConfigError, match="equal dims"):
        fuse_vectors(
            text, ProductVectors(ids, np.eye(3, 2, dtype=np.float32), image.present), centre=True
        )


def test_user_tower_method_sees_only_the_train_period() -> None:
    data, pv = _content_data()
    seen: list[ColdStartSplit] = []

    def fit(split: ColdStartSplit, vectors: ProductVectors) -> tuple[np.ndarray, dict[str, object]]:
        seen.append(split)
        assert all(item.timestamp < split.cutoff for item in split.train)
        return np.array([[0.0, 1.0, 0.0]]), {"epochs": 1}

    method = UserTowerMethod("tower", pv, fit)
    scores = method.score(data)
    np.testing.assert_allclose(scores[0, :2], [0.6, 0.8])
    assert method.info == {"epochs": 1} and len(seen) == 1


def test_one_hot_taste_vectors_beat_random_on_the_synthetic_catalogue(synth_dir: Path) -> None:
    catalog = read_catalog(synth_dir)
    split = split_catalog(
        catalog, load_ground_truth(synth_dir).cutoff, test_events=parse_events("purchase,cart")
    )
    products = {p.product_id: p for p in catalog.products}
    keys = ("type", "colour", "pattern", "style", "price_band")
    values = sorted({(k, p.attributes[k]) for p in catalog.products for k in keys})
    column = {v: i for i, v in enumerate(values)}
    vectors = np.zeros((len(catalog.products), len(values)), dtype=np.float32)
    for row, p in enumerate(catalog.products):
        for k in keys:
            vectors[row, column[(k, p.attributes[k])]] = 1 / math.sqrt(len(keys))
    pv = ProductVectors(list(products), vectors, np.ones(len(products), dtype=bool))
    data = EvalData(split, products)
    truth = split.truth_indices()
    spec = MetricSpec()

    def recall20(scores: np.ndarray) -> float:
        return score_rankings(scores, truth, spec=spec, seeds=range(5)).mean()["recall@20"]

    random = recall20(RandomBaseline().score(data))
    assert recall20(MeanVectorMethod("mean", pv).score(data)) > random
    affinity = AttributeAffinity(AttributeKeys("type", "colour", "style"))
    assert recall20(affinity.score(data)) > random


# ----------------------------------------------------------------------------- end to end


def test_cli_evaluate_writes_json_markdown_png(
    synth_dir: Path,
    tiny_text_model_dir: Path,
    tiny_clip_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_json = tmp_path / "table.json"
    reports = tmp_path / "reports"
    argv = [
        "evaluate",
        "--data",
        str(synth_dir),
        "--text-model",
        str(tiny_text_model_dir),
        "--image-tower",
        str(tiny_clip_dir),
        "--no-user-tower",
        "--seeds",
        "2",
        "--json",
        str(out_json),
        "--reports",
        str(reports),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "personal attribute affinity" in printed and "R@20" in printed

    table = json.loads(out_json.read_text())
    methods = table["methods"]
    assert {
        "random",
        "personal attribute affinity",
        "text / max similarity",
        "image / mean user vector",
        "fused-late / max similarity",
    } <= set(methods)
    assert set(methods["random"]) == set(MetricSpec().names())
    assert table["n_test_users"] > 0 and table["n_cold_items"] > 0
    assert table["seed"] == 0 and table["seeds"] == [0, 1]
    assert table["config"]["dataset"]["kind"] == "synthetic"
    assert table["config"]["dataset"]["test_events"] == ["cart", "purchase"]
    # The tiny photo tower (24-d) is not aligned to the tiny text model (32-d): no sum fusion.
    assert any("sum fusions skipped" in note for note in table["notes"])
    assert "fused-sum / mean user vector" not in methods
    # Known tastes: the personal baseline finds them, random does not.
    assert methods["personal attribute affinity"]["recall@20"] > methods["random"]["recall@20"]

    written = sorted(p.name for p in reports.iterdir())
    stem = f"evaluation-{synth_dir.name}-"
    assert [p.rsplit(".", 1)[1] for p in written] == ["json", "md", "png"]
    assert all(p.startswith(stem) for p in written)
    assert (reports / written[2]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (reports / written[1]).read_text()
    assert "| method |" in markdown and '"seed": 0' in markdown

    # Same seed, same numbers (vectors come from the cache the second time).
    argv[argv.index("--json") + 1] = str(tmp_path / "again.json")
    assert main(argv) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["methods"] == methods


def test_generic_catalogue_needs_a_cutoff(tmp_path: Path) -> None:
    from newarrivals.indexer.catalog.writers import write_catalog
    from newarrivals.indexer.evaluation import EvaluateConfig, evaluate

    write_catalog(_tiny_catalog(), tmp_path / "cat")
    with pytest.raises(ConfigError, match="cutoff"):
        evaluate(EvaluateConfig(tmp_path / "cat", text=None, user_tower=False))
    with pytest.raises(ConfigError, match="2024-13-01"):
        EvaluateConfig(tmp_path / "cat", cutoff="2024-13-01")
    with pytest.raises(ConfigError, match="seeds must be a positive integer, got 0"):
        EvaluateConfig(tmp_path / "cat", seeds=0)
    with pytest.raises(ConfigError, match="image tower"):
        EvaluateConfig(tmp_path / "cat", image_tower=tmp_path / "missing")


def test_evaluate_trains_the_user_tower_on_the_train_period(
    synth_dir: Path, tiny_text_model_dir: Path, tmp_path: Path
) -> None:
    from newarrivals.indexer.encoders import TextEncoderConfig
    from newarrivals.indexer.evaluation import EvaluateConfig, evaluate

    report = evaluate(
        EvaluateConfig(
            synth_dir,
            text=TextEncoderConfig(model=str(tiny_text_model_dir)),
            user_tower_minutes=0.05,
            seeds=1,
            reports_dir=tmp_path / "reports",
            cache_dir=tmp_path / "cache",
            device="cpu",
            progress=False,
        )
    )
    kinds = {r.name: r.kind for r in report.results}
    assert kinds["text / user tower"] == "user tower"
    towers = report.to_dict()["config"]["user_towers"]
    assert towers["text / user tower"]["config"]["max_minutes"] == 0.05
    assert report.best_method is not None and len(report.margins) == 2


def test_margins_are_paired_over_the_same_users() -> None:
    from newarrivals.indexer.evaluation import MethodResult, PerUserMetrics, compute_margins

    def result(name: str, kind: str, recall: list[float], ndcg: list[float]) -> MethodResult:
        per_user = PerUserMetrics(
            {"recall@20": np.array(recall, dtype=np.float64), "ndcg@20": np.array(ndcg)}
        )
        return MethodResult.from_per_user(name, kind, per_user, np.ones(3, dtype=bool), 0.0)

    results = [
        result("random", "baseline", [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        result("affinity", "baseline", [0.5, 0.0, 0.0], [0.2, 0.0, 0.0]),
        result("content", "content", [0.5, 0.5, 0.25], [0.2, 0.3, 0.1]),
    ]
    best, margins = compute_margins(results)
    assert best == "content"
    recall, ndcg = margins
    assert recall.baseline == "affinity" and recall.value == pytest.approx(0.25)
    # Paired differences (0, .5, .25): s.e. = std(ddof=1) / sqrt(3) = .25 / sqrt(3).
    assert recall.stderr == pytest.approx(0.25 / math.sqrt(3))
    assert ndcg.value == pytest.approx(0.4 / 3)
    _, subset = compute_margins(results, users=np.array([True, False, False]))
    assert subset[0].value == 0.0 and subset[0].method_value == 0.5
