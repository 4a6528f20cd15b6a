"""Ranker training: cold-start window lists, the optimiser fix, calibration, the blend."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from newarrivals.indexer.catalog.schema import EventType, Interaction, Product
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.evaluation.methods import ProductVectors
from newarrivals.ranker import RankerConfig
from newarrivals.ranker.blend import (
    Blend,
    BlendList,
    fit_blend,
    holdout_warning,
    standardise,
)
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker
from newarrivals.ranker.training.cold_start import (
    ColdStartListConfig,
    ColdStartLists,
    build_cold_start_lists,
)
from newarrivals.ranker.training.fit import fit_cold_start_ranker
from newarrivals.ranker.training.lists import split_by_user
from newarrivals.ranker.training.metrics import list_nll, rerank_ndcg
from newarrivals.ranker.training.rerank_blend import RerankReport, blend_for_ranker
from newarrivals.ranker.training.trainer import RankerTrainingReport, open_cls

from .conftest import COLOURS, GARMENTS

CUTOFF = datetime(2024, 4, 1, tzinfo=UTC)


class ColourShop:
    """Shoppers who each buy one colour; new products arrive every week.

    Product vectors carry the garment only (so retrieval cannot see the colour) while the
    text names the colour: the ranker has something to add to retrieval.
    """

    def __init__(self, n_users: int = 120, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        start = CUTOFF - timedelta(days=120)
        self.products: dict[str, Product] = {}
        garment_of: dict[str, int] = {}
        for week in range(17):
            launch = start + timedelta(days=7 * week)
            for c in range(len(COLOURS)):
                for g in range(len(GARMENTS)):
                    pid = f"w{week:02d}{c}{g}"
                    self.products[pid] = Product(
                        pid,
                        title=f"{COLOURS[c]} {GARMENTS[g]}",
                        category=("Clothing", GARMENTS[g]),
                        attributes={"colour": COLOURS[c]},
                        launched_at=launch,
                    )
                    garment_of[pid] = g
        ids = sorted(self.products)
        basis = rng.normal(size=(len(GARMENTS), 16))
        vecs = basis[[garment_of[p] for p in ids]] + 0.3 * rng.normal(size=(len(ids), 16))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        self.vectors = {
            "text": ProductVectors(ids, vecs.astype(np.float32), np.ones(len(ids), dtype=bool))
        }
        self.events: list[Interaction] = []
        for u in range(n_users):
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            garments = rng.choice(len(GARMENTS), 2, replace=False)
            for day in sorted(rng.choice(118, 8, replace=False).tolist()):
                when = start + timedelta(days=day, hours=1)
                # Buy something launched in the last two weeks: new arrivals.
                week = min(16, day // 7)
                fresh = [
                    p
                    for p in ids
                    if p.startswith(f"w{week:02d}") or p.startswith(f"w{max(0, week - 1):02d}")
                ]
                pool = [
                    p
                    for p in fresh
                    if self.products[p].attributes["colour"] == colour and garment_of[p] in garments
                ]
                pid = pool[int(rng.integers(len(pool)))]
                if self.products[pid].launched_at <= when:  # type: ignore[operator]
                    self.events.append(Interaction(f"u{u}", pid, EventType.PURCHASE, when))


TRAIN = RankerTrainConfig(
    retrieval_candidates=20,
    hard_negatives=6,
    random_negatives=3,
    max_lists_per_user=3,
    epochs=6,
    batch_lists=8,
    learning_rate=3e-3,
    head_learning_rate=3e-3,
    patience=3,
    seed=0,
)
LISTS = ColdStartListConfig(windows=3, window_days=21, retrieval="text/max")
Fitted = tuple[CrossEncoderRanker, RankerTrainingReport, RerankReport | None, ColdStartLists]


@pytest.fixture(scope="module")
def shop() -> ColourShop:
    return ColourShop()


def tiny_config(model_dir: Path) -> RankerConfig:
    return RankerConfig(
        base_model=str(model_dir), context_tokens=32, candidate_tokens=12, max_context_items=4
    )


# -- lists --------------------------------------------------------------------------


def test_cold_start_lists_mirror_the_evaluation_split(shop: ColourShop) -> None:
    built = build_cold_start_lists(
        shop.events, shop.products, shop.vectors, CUTOFF, TRAIN, LISTS, max_context_items=4
    )
    assert len(built.lists) >= 200
    assert built.features == ("retrieval", "text", "text-mean")
    assert [w["lists"] > 0 for w in built.windows] == [True] * 3
    first_sale: dict[str, datetime] = {}
    for e in sorted(shop.events, key=lambda e: e.timestamp):
        first_sale.setdefault(e.product_id, e.timestamp)
    for lst in built.lists:
        assert len(lst.candidate_ids) == TRAIN.list_size == len(set(lst.candidate_ids))
        assert set(lst.features) == {"retrieval", "text", "text-mean"}
        assert all(len(v) == TRAIN.list_size for v in lst.features.values())
        assert not set(lst.context_ids) & set(lst.candidate_ids)
        # Every candidate is pseudo-cold: unsold before the window, so first sold (if at
        # all) after every product of the user's context was.
        newest_context = max(first_sale[p] for p in lst.context_ids)
        never = CUTOFF + timedelta(days=1)
        assert all(first_sale.get(c, never) > newest_context for c in lst.candidate_ids)
    # Hard negatives come from the retrieval top-N: they outscore the random ones.
    hard = np.mean([np.sort(lst.features["retrieval"])[-4:].mean() for lst in built.lists])
    low = np.mean([np.sort(lst.features["retrieval"])[:2].mean() for lst in built.lists])
    assert hard > low + 0.5
    for r in built.rerank[:20]:
        assert len(r.candidate_ids) == len(r.relevant) <= TRAIN.retrieval_candidates
        assert r.n_relevant >= sum(r.relevant)
        retrieval = np.asarray(r.features["retrieval"])
        assert (np.diff(retrieval) <= 1e-12).all()  # retrieval order


def test_retrieved_positives_are_the_ones_reranking_can_move(shop: ColourShop) -> None:
    every = build_cold_start_lists(
        shop.events, shop.products, shop.vectors, CUTOFF, TRAIN, LISTS, max_context_items=4
    )
    inside = replace(LISTS, positives="retrieved")
    built = build_cold_start_lists(
        shop.events, shop.products, shop.vectors, CUTOFF, TRAIN, inside, max_context_items=4
    )
    # Each user's top candidates, per window in order (a user may appear in several).
    tops: dict[str, list[set[str]]] = {}
    for r in built.rerank:
        tops.setdefault(r.user_id, []).append(set(r.candidate_ids))
    assert 0 < len(built.lists) < len(every.lists)
    for lst in built.lists:
        positive = lst.candidate_ids[lst.positive]
        assert any(positive in top for top in tops[lst.user_id])
    # With every positive, some lie outside the retrieved top: the lists this option drops.
    outside = [
        lst
        for lst in every.lists
        if not any(lst.candidate_ids[lst.positive] in top for top in tops.get(lst.user_id, []))
    ]
    assert outside
    with pytest.raises(ConfigError, match="positives"):
        ColdStartListConfig(positives="all")


def test_cold_start_lists_read_nothing_at_or_after_the_cutoff(shop: ColourShop) -> None:
    late = [
        Interaction("u0", "w16" + "00", EventType.PURCHASE, CUTOFF),
        Interaction("u1", "w16" + "11", EventType.PURCHASE, CUTOFF + timedelta(days=3)),
    ]
    a = build_cold_start_lists(
        shop.events, shop.products, shop.vectors, CUTOFF, TRAIN, LISTS, max_context_items=4
    )
    b = build_cold_start_lists(
        [*shop.events, *late], shop.products, shop.vectors, CUTOFF, TRAIN, LISTS,
        max_context_items=4,
    )  # fmt: skip
    assert [x.candidate_ids for x in a.lists] == [x.candidate_ids for x in b.lists]


def test_cold_start_lists_explain_an_empty_history(shop: ColourShop) -> None:
    with pytest.raises(CatalogError, match="no pseudo cold-start window"):
        build_cold_start_lists(
            shop.events, shop.products, shop.vectors, CUTOFF - timedelta(days=115), TRAIN, LISTS
        )
    with pytest.raises(ConfigError, match="retrieval"):
        ColdStartListConfig(retrieval="bm25")
    with pytest.raises(ConfigError, match="window_days"):
        ColdStartListConfig(window_days=0)


def test_rerank_ndcg_matches_hand_values(shop: ColourShop) -> None:
    built = build_cold_start_lists(
        shop.events, shop.products, shop.vectors, CUTOFF, TRAIN, LISTS, max_context_items=4
    )
    lst = next(r for r in built.rerank if any(r.relevant))
    n = len(lst.candidate_ids)
    perfect = np.asarray(lst.relevant, dtype=float)
    expected = sum(1 / np.log2(r + 2) for r in range(int(perfect.sum()))) / sum(
        1 / np.log2(r + 2) for r in range(min(lst.n_relevant, 20))
    )
    assert rerank_ndcg([perfect], [lst], 20) == pytest.approx(expected)
    assert rerank_ndcg([-perfect], [lst], 20) <= rerank_ndcg([np.zeros(n)], [lst], 20) + 1e-12


# -- the optimiser fix --------------------------------------------------------------


def test_open_cls_makes_the_last_layer_attend_uniformly(tiny_text_model_dir: Path) -> None:
    import torch

    ranker = CrossEncoderRanker.from_base(tiny_config(tiny_text_model_dir))
    model: Any = ranker.torch_model
    assert open_cls(model)
    query = model.base_model.encoder.layer[-1].attention.self.query
    assert float(query.weight.detach().abs().sum()) == 0.0
    model.set_attn_implementation("eager")
    batch = ranker.pairs([([5, 6, 7], [8, 9]), ([5, 6, 7], [10, 11, 12, 13])])
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
            token_type_ids=torch.from_numpy(batch.token_type_ids),
            output_attentions=True,
        )
    last = out.attentions[-1][0, :, 0, :8]  # first pair: 8 real tokens, then padding
    assert torch.allclose(last, torch.full_like(last, 1 / 8), atol=1e-6)
    assert not open_cls(torch.nn.Linear(2, 2))


def test_train_config_validates_the_new_knobs() -> None:
    with pytest.raises(ConfigError, match="head_learning_rate"):
        RankerTrainConfig(head_learning_rate=0)
    with pytest.raises(ConfigError, match="warmup_fraction"):
        RankerTrainConfig(warmup_fraction=1.0)
    with pytest.raises(ConfigError, match="open_cls"):
        RankerTrainConfig(open_cls="yes")  # type: ignore[arg-type]
    config = RankerTrainConfig(head_learning_rate=1e-3, warmup_fraction=0.2, open_cls=False)
    assert RankerTrainConfig.from_dict(config.to_dict()) == config


# -- end to end on cold-start lists ---------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tiny_text_model_dir: Path, shop: ColourShop) -> Fitted:
    return fit_cold_start_ranker(
        shop.events,
        shop.products,
        shop.vectors,
        CUTOFF,
        tiny_config(tiny_text_model_dir),
        replace(TRAIN, val_fraction=0.4),
        LISTS,
        blend_k=10,
    )


def test_smoke_fine_tune_on_cold_start_lists_beats_the_untrained_model(
    fitted: Fitted,
) -> None:
    _, report, _, _ = fitted
    assert report.n_train_lists >= 150
    # Validation and holdout users are disjoint from the training users.
    assert report.n_holdout_lists > 20
    assert report.ndcg_after >= report.ndcg_before + 0.1, report
    assert report.holdout_ndcg_after >= report.holdout_ndcg_before + 0.1
    # Colour is in the text, not in the vectors: the ranker beats the retrieval order.
    assert report.holdout_ndcg_after > report.holdout_ndcg_retrieval
    assert report.steps > 0


def test_temperature_is_fitted_on_validation_and_lowers_holdout_nll(
    fitted: Fitted,
) -> None:
    ranker, report, _, _ = fitted
    assert ranker.temperature == report.temperature
    assert "holdout" in report.ece_kind
    assert report.nll_after_temperature < report.nll_before_temperature
    assert 0.0 <= report.ece_after_temperature <= 1.0


def test_blend_file_keeps_the_holdout_check_and_warns_on_a_losing_ranker(
    fitted: Fitted, tmp_path: Path
) -> None:
    _, _, blend_report, _ = fitted
    assert blend_report is not None
    path = blend_report.save(tmp_path / "good")
    assert Blend.load(path.parent) == blend_report.blend
    # This ranker reads the colour retrieval cannot see: no warning.
    assert holdout_warning(path.parent) is None
    losing = replace(blend_report, ndcg_ranker=blend_report.ndcg_retrieval - 0.05)
    bad = losing.save(tmp_path / "bad").parent
    note = holdout_warning(bad, why_not="fitted elsewhere")
    assert note is not None and f"{blend_report.ndcg_retrieval:.3f}" in note
    assert "ranker alone" in note and "not applied: fitted elsewhere" in note
    # Served through the blend, the ranker's own loss is not what the user gets.
    assert holdout_warning(bad, blended=True) is None
    lost_blend = replace(blend_report, ndcg_blend=blend_report.ndcg_retrieval - 0.01)
    blended_note = holdout_warning(lost_blend.save(tmp_path / "b").parent, blended=True)
    assert blended_note is not None and blended_note.startswith("the blend ordered")
    blend_report.blend.save(tmp_path / "old")  # no holdout recorded: nothing to say
    assert holdout_warning(tmp_path / "old") is None
    assert holdout_warning(tmp_path / "nowhere") is None


def test_blend_is_fitted_on_validation_rerank_lists(fitted: Fitted) -> None:
    _, _, blend_report, _ = fitted
    assert blend_report is not None
    blend = blend_report.blend
    # The text max-similarity is part of the retrieval score; the mean-vector one is not.
    assert blend.features == ("ranker", "retrieval", "text-mean")
    # Step 1 fitted the features without the ranker on more users' lists; step 2 fitted the
    # ranker's weight only and kept the others.
    assert blend.prior[0] == 0.0 and blend.prior[1] > 0.0
    assert blend.weights[1:] == blend.prior[1:]
    assert blend_report.n_feature_lists > blend_report.n_fit_lists
    assert blend.weight["ranker"] > 0.3
    assert blend_report.ndcg_blend >= blend_report.ndcg_retrieval
    # Colour is only in the text: the ranker adds what the vector features cannot.
    assert blend_report.ndcg_blend > blend_report.ndcg_features
    # The weights hold for the first stage they were fitted after, so the blend says which.
    assert blend.retrieval == LISTS.retrieval == "text/max"


def test_a_blend_after_the_serving_first_stage_adds_the_max_similarity(
    fitted: Fitted, shop: ColourShop
) -> None:
    ranker = fitted[0]
    serving = replace(LISTS, retrieval="fused-concat/mean")
    built = build_cold_start_lists(
        shop.events, shop.products, shop.vectors, CUTOFF, TRAIN, serving, max_context_items=4
    )
    assert built.retrieval == "fused-concat/mean"
    report = blend_for_ranker(ranker, built, shop.products, replace(TRAIN, val_fraction=0.4))
    # A mean-vector first stage lacks the max-similarity, which the blend then reads.
    assert report.blend.features == ("ranker", "retrieval", "text", "text-mean")
    assert report.blend.retrieval == "fused-concat/mean"
    assert report.ndcg_blend >= report.ndcg_retrieval


def test_split_by_user_keeps_users_apart(shop: ColourShop) -> None:
    built = build_cold_start_lists(
        shop.events, shop.products, shop.vectors, CUTOFF, TRAIN, LISTS, max_context_items=4
    )
    train, held = split_by_user(built.lists, 0.4, seed=0)
    val, hold = split_by_user(held, 0.5, seed=1)
    users = [{x.user_id for x in part} for part in (train, val, hold)]
    assert not users[0] & users[1] and not users[0] & users[2] and not users[1] & users[2]


# -- blend --------------------------------------------------------------------------


def _blend_lists(n_lists: int, seed: int) -> list[BlendList]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_lists):
        informative, noise = rng.normal(size=30), rng.normal(size=30)
        utility = 2.0 * informative + rng.gumbel(size=30)
        relevant = np.zeros(30, dtype=bool)
        relevant[int(np.argmax(utility))] = True
        # Raw scales differ on purpose: the blend standardises within each list.
        out.append(BlendList(np.stack([100 * informative + 7, noise / 50], axis=1), relevant))
    return out


def test_blend_learns_the_informative_feature_and_ignores_noise() -> None:
    blend = fit_blend(_blend_lists(400, seed=0), ("informative", "noise"))
    assert blend.weight["informative"] == pytest.approx(2.0, abs=0.4)
    assert abs(blend.weight["noise"]) < 0.15
    held_out = _blend_lists(200, seed=1)
    assert blend.nll(held_out) < Blend(("informative", "noise"), (0.0, 0.0)).nll(held_out) - 0.5


def test_blend_with_few_lists_stays_near_its_prior() -> None:
    few = _blend_lists(10, seed=2)
    shrunk = fit_blend(few, ("informative", "noise"), l2=50.0, prior=(0.0, 1.0))
    free = fit_blend(few, ("informative", "noise"), l2=1e-3)
    assert abs(shrunk.weight["noise"] - 1.0) < abs(free.weight["noise"] - 1.0)
    assert 0.0 < shrunk.weight["informative"] < free.weight["informative"]
    with pytest.raises(ConfigError, match="prior"):
        fit_blend(few, ("informative", "noise"), prior=(1.0,))


def test_blend_fits_only_the_free_features() -> None:
    lists = _blend_lists(200, seed=4)
    blend = fit_blend(lists, ("informative", "noise"), prior=(0.0, 0.7), free=("informative",))
    assert blend.weight["noise"] == 0.7  # kept at its prior
    assert blend.weight["informative"] == pytest.approx(2.0, abs=0.5)
    with pytest.raises(ConfigError, match="free must name"):
        fit_blend(lists, ("informative", "noise"), free=("photo",))


def test_blend_round_trips_and_rejects_bad_input(tmp_path: Path) -> None:
    blend = Blend(("ranker", "retrieval"), (0.5, 1.5), l2=0.01, n_lists=3, fitted_on="x")
    blend.save(tmp_path)
    assert Blend.load(tmp_path) == blend
    assert Blend.load(tmp_path / "nowhere") is None
    assert standardise([[1.0, 2.0], [1.0, 4.0]]).tolist() == [[0.0, -1.0], [0.0, 1.0]]
    with pytest.raises(ConfigError, match="one weight per feature"):
        Blend(("a", "b"), (1.0,))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        blend.score([[np.nan, 1.0], [0.0, 1.0]])
    with pytest.raises(ConfigError, match="2 features"):
        blend.score([[1.0, 2.0, 3.0]])
    only_relevant = [BlendList(np.ones((3, 2)), np.ones(3, dtype=bool))]
    with pytest.raises(ConfigError, match="both a relevant and an irrelevant"):
        fit_blend(only_relevant, ("a", "b"))


def test_list_nll_of_a_constant_scorer_is_log_list_size() -> None:
    assert list_nll(np.zeros((4, 10)), np.zeros(4, dtype=np.int64)) == pytest.approx(np.log(10))


def test_early_stopping_keeps_the_best_and_ignores_warmup_epochs() -> None:
    """The ranker's loops run on the shared loop: warmup epochs use up no patience, the
    best epoch's weights come back, and the stop reasons name the validation NDCG."""
    import torch

    from newarrivals.indexer.towers.training_loop import EpochOutcome, TimeBudget, run_epochs

    model = torch.nn.Linear(2, 1)
    # Flat epochs inside the warmup use up no patience; then a better epoch (weights 1.0)
    # and two worse ones (weights 2.0).
    plan = {1: (0.5, None), 2: (0.5, None), 3: (0.5, None), 4: (0.6, 1.0), 5: (0.55, 2.0)}

    def epoch(number: int, budget: TimeBudget) -> EpochOutcome[int]:
        score, weight = plan.get(number, (0.55, None))
        if weight is not None:
            with torch.no_grad():
                model.weight.fill_(weight)
        return EpochOutcome(number, score, counts_for_patience=number > 3)

    stopping = run_epochs(
        model,
        epoch,
        max_epochs=10,
        budget=TimeBudget(None),
        patience=2,
        initial_score=0.5,
        score_name="validation NDCG",
    )
    assert stopping.records == (1, 2, 3, 4, 5, 6)
    assert stopping.stop_reason == "no better validation NDCG for 2 epochs"
    assert stopping.best_epoch == 4 and float(model.weight[0, 0]) == 1.0
    assert not model.training
    ticks = iter([0.0, 30.0, 61.0])
    timed = run_epochs(
        model,
        epoch,
        max_epochs=10,
        budget=TimeBudget(1.0, clock=lambda: next(ticks)),
        patience=2,
        initial_score=0.5,
    )
    assert timed.stop_reason == "time limit"
