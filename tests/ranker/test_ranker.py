"""The cross-encoder ranker: lists, training, calibration, probabilities, artifacts, MMR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from newarrivals.indexer.catalog.schema import EventType, Product
from newarrivals.indexer.errors import ConfigError, UnknownProductError
from newarrivals.indexer.evaluation.metrics import one_relevant_ndcg_at_k
from newarrivals.indexer.index.filters import Candidate
from newarrivals.ranker import RankerConfig, RankingInputError, context_item_text, softmax
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.context import pair_batch
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker
from newarrivals.ranker.serving.mmr import intra_list_diversity, mmr_order, mmr_rerank
from newarrivals.ranker.training.lists import build_training_lists, split_by_user
from newarrivals.ranker.training.metrics import (
    expected_calibration_error,
    fit_temperature,
    list_nll,
)
from newarrivals.ranker.training.trainer import RankerTrainingReport, train_ranker

from .conftest import COLOURS, Shop

TRAIN = RankerTrainConfig(
    retrieval_candidates=20,
    hard_negatives=6,
    random_negatives=3,
    max_lists_per_user=3,
    epochs=8,
    batch_lists=8,
    learning_rate=3e-3,
    patience=3,
    seed=0,
)


def tiny_config(model_dir: Path) -> RankerConfig:
    return RankerConfig(
        base_model=str(model_dir), context_tokens=32, candidate_tokens=16, max_context_items=4
    )


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop(n_users=150)


@pytest.fixture(scope="module")
def trained(
    tiny_text_model_dir: Path, shop: Shop
) -> tuple[CrossEncoderRanker, RankerTrainingReport]:
    lists = build_training_lists(shop.events, shop.by_id, shop.store, TRAIN, max_context_items=4)
    train, val = split_by_user(lists, 0.25, seed=0)
    ranker = CrossEncoderRanker.from_base(tiny_config(tiny_text_model_dir))
    report = train_ranker(ranker, train, val, shop.by_id, TRAIN)
    return ranker, report


@pytest.fixture
def untrained(tiny_text_model_dir: Path) -> CrossEncoderRanker:
    return CrossEncoderRanker.from_base(tiny_config(tiny_text_model_dir))


# -- config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_layers": 0}, "num_layers"),
        ({"context_tokens": 4}, "context_tokens"),
        ({"candidate_tokens": 2.5}, "candidate_tokens"),
        ({"base_model": " "}, "base_model"),
        ({"max_context_items": -1}, "max_context_items"),
    ],
)
def test_ranker_config_rejects_bad_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RankerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"hard_negatives": 60, "retrieval_candidates": 50}, "hard_negatives"),
        ({"hard_negatives": 0, "random_negatives": 0}, "at least 1"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"positive_events": ("buy",)}, "positive_events"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"max_minutes": -1.0}, "max_minutes"),
        ({"epochs": True}, "epochs"),
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RankerTrainConfig(**kwargs)  # type: ignore[arg-type]


def test_train_config_round_trips_through_a_dict() -> None:
    config = RankerTrainConfig(positive_events=("cart", "purchase"))  # type: ignore[arg-type]
    assert config.positive_events == (EventType.CART, EventType.PURCHASE)
    assert RankerTrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_token_budgets_must_fit_the_model(tiny_text_model_dir: Path) -> None:
    # The tiny model has 128 positions.
    config = RankerConfig(base_model=str(tiny_text_model_dir), context_tokens=100)
    with pytest.raises(ConfigError, match="positions"):
        CrossEncoderRanker.from_base(config)


def _bert_dir(root: Path, layers: int) -> Path:
    """A random 32-wide BERT checkpoint with MiniLM's tokenizer files."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from newarrivals.indexer.encoders import bundled_minilm_path

    root.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(bundled_minilm_path() / name, root / name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        cfg = BertConfig(
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        BertModel(cfg).save_pretrained(root)
    return root


def test_truncated_base_keeps_the_checkpoint_weights_of_its_layers(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base = _bert_dir(tmp_path / "bert3", layers=3)
    config = RankerConfig(
        base_model=str(base), num_layers=2, context_tokens=32, candidate_tokens=16
    )
    ranker = CrossEncoderRanker.from_base(config)
    saved = load_file(str(base / "model.safetensors"))
    encoder = ranker.torch_model.get_submodule("bert").state_dict()
    assert not any(k.startswith("encoder.layer.2.") for k in encoder)
    assert all(np.array_equal(encoder[k].numpy(), saved[k].numpy()) for k in encoder)
    assert not ranker.torch_model.training


def test_base_checkpoint_missing_weights_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    base = _bert_dir(tmp_path / "bert2", layers=2)
    weights = base / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if not k.startswith("encoder.layer.1.")}, weights)
    with pytest.raises(ConfigError, match=r"lacks \d+ weights .*encoder\.layer\.1\."):
        CrossEncoderRanker.from_base(
            RankerConfig(base_model=str(base), context_tokens=32, candidate_tokens=16)
        )


# -- text ---------------------------------------------------------------------------


def test_context_item_text_keeps_title_and_new_attributes() -> None:
    p = Product("x", title="Red tee", category=("Tops", "T-shirt"), attributes={"colour": "red"})
    assert context_item_text(p) == "Red tee (T-shirt)"


def test_context_is_newest_first_and_cut_to_its_budget(untrained: CrossEncoderRanker) -> None:
    recent = [
        Product(f"r{i}", title=f"item number {i} with a long title about linen") for i in range(10)
    ]
    context = untrained.encode_context(recent)
    assert len(context.token_ids) == untrained.config.context_tokens
    assert context.product_ids == tuple(p.product_id for p in recent[:4])
    decoded = untrained.tokenizer.decode(list(context.token_ids))
    assert decoded.startswith("item number 0")


def test_pair_batch_layout() -> None:
    batch = pair_batch([([5, 6], [7]), ([5], [8, 9, 10])], cls_id=1, sep_id=2, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 5, 6, 2, 7, 2, 0], [1, 5, 2, 8, 9, 10, 2]]
    assert batch.token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0], [1] * 7]


# -- lists and metrics --------------------------------------------------------------


def test_training_lists_hold_one_positive_and_hard_negatives(shop: Shop) -> None:
    lists = build_training_lists(shop.events, shop.by_id, shop.store, TRAIN, max_context_items=4)
    assert len(lists) == 3 * 150
    for lst in lists[:50]:
        assert len(lst.candidate_ids) == TRAIN.list_size
        assert len(set(lst.candidate_ids)) == TRAIN.list_size
        positive = lst.candidate_ids[lst.positive]
        assert positive not in lst.context_ids
        assert not set(lst.context_ids) & set(lst.candidate_ids)
    positions = {lst.positive for lst in lists}
    assert len(positions) > 5  # the positive is not always in the same slot
    train, val = split_by_user(lists, 0.25, seed=0)
    assert not {lst.user_id for lst in train} & {lst.user_id for lst in val}


def test_ndcg_ece_and_nll_on_known_values() -> None:
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    positives = np.array([0, 1])
    # list 1: rank 1 -> 1.0; list 2: all tied -> mean of ranks 1..3.
    tied = (1.0 + 1.0 / np.log2(3) + 0.5) / 3
    assert one_relevant_ndcg_at_k(scores, positives, k=10) == pytest.approx((1.0 + tied) / 2)
    assert list_nll(scores[1:], positives[1:]) == pytest.approx(np.log(3))
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert expected_calibration_error(probs, np.array([0, 1]), n_bins=10) == pytest.approx(0.4)


def test_fit_temperature_lowers_nll_of_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    positives = rng.integers(0, 10, size=400)
    scores = rng.normal(size=(400, 10))
    scores[np.arange(400), positives] += 1.0
    scores *= 8.0  # overconfident
    t = fit_temperature(scores, positives)
    assert t > 2.0
    assert list_nll(scores, positives, t) < list_nll(scores, positives, 1.0) - 0.5


# -- ranking ------------------------------------------------------------------------


def test_probabilities_sum_to_one_and_ignore_candidate_order(
    untrained: CrossEncoderRanker, shop: Shop
) -> None:
    context = untrained.encode_context(shop.products[:3])
    candidates = [Candidate(p.product_id, 1.0 - 0.01 * i) for i, p in enumerate(shop.products[:30])]
    ranked = untrained.rank(context, candidates, shop.by_id)
    assert sum(c.probability for c in ranked) == pytest.approx(1.0, abs=1e-9)
    assert [c.probability for c in ranked] == sorted((c.probability for c in ranked), reverse=True)
    by_id = {c.product_id: c for c in ranked}
    assert by_id[candidates[4].product_id].retrieval_score == pytest.approx(candidates[4].score)
    shuffled = [candidates[i] for i in np.random.default_rng(1).permutation(len(candidates))]
    again = {c.product_id: c for c in untrained.rank(context, shuffled, shop.by_id)}
    for pid, c in by_id.items():
        assert again[pid].probability == pytest.approx(c.probability, rel=1e-5, abs=1e-7)
        assert again[pid].raw_score == pytest.approx(c.raw_score, rel=1e-5, abs=1e-6)
    expected = softmax([c.raw_score for c in ranked], untrained.temperature)
    np.testing.assert_allclose([c.probability for c in ranked], expected, rtol=1e-9)


def test_bad_requests_get_clear_errors(untrained: CrossEncoderRanker, shop: Shop) -> None:
    context = untrained.encode_context(shop.products[:2])
    with pytest.raises(RankingInputError, match="candidate list is empty"):
        untrained.rank(context, [], shop.by_id)
    with pytest.raises(RankingInputError, match="empty"):
        untrained.score(context, [])
    with pytest.raises(UnknownProductError, match="'nope'"):
        untrained.rank(context, [Candidate("p000", 1.0), Candidate("nope", 0.5)], shop.by_id)
    with pytest.raises(RankingInputError, match="listed twice"):
        untrained.rank(context, [Candidate("p000", 1.0), Candidate("p000", 0.5)], shop.by_id)
    with pytest.raises(ConfigError, match="temperature"):
        untrained.temperature = 0.0


def test_save_load_round_trip_gives_identical_scores(
    trained: tuple[CrossEncoderRanker, RankerTrainingReport], shop: Shop, tmp_path: Path
) -> None:
    ranker, report = trained
    out = ranker.save(tmp_path / "rk", extra={"ndcg_after": report.ndcg_after})
    manifest = json.loads((out / "ranker.json").read_text())
    assert manifest["temperature"] == ranker.temperature
    assert manifest["num_layers"] == 2
    assert "torch" in manifest["library_versions"]
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pkl"))
    loaded = CrossEncoderRanker.load(out)
    context = ranker.encode_context(shop.products[5:9])
    candidates = [Candidate(p.product_id, 0.0) for p in shop.products[40:60]]
    assert ranker.rank(context, candidates, shop.by_id) == loaded.rank(
        context, candidates, shop.by_id
    )
    with pytest.raises(ConfigError, match="not a ranker artifact"):
        CrossEncoderRanker.load(tmp_path)


# -- training -----------------------------------------------------------------------


def test_smoke_fine_tune_improves_validation_ndcg(
    trained: tuple[CrossEncoderRanker, RankerTrainingReport],
) -> None:
    _, report = trained
    assert report.n_train_lists >= 300
    assert report.ndcg_after >= report.ndcg_before + 0.1, report.to_dict()
    assert report.best_epoch >= 1
    assert report.history[-1].train_loss < report.history[0].train_loss


def test_temperature_fit_lowers_validation_nll(
    trained: tuple[CrossEncoderRanker, RankerTrainingReport],
) -> None:
    ranker, report = trained
    assert ranker.temperature == report.temperature
    assert report.nll_after_temperature <= report.nll_before_temperature
    assert 0.0 <= report.ece_after_temperature <= 1.0


# -- diversity ----------------------------------------------------------------------


def test_mmr_lambda_one_keeps_relevance_order_and_lower_lambda_diversifies() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    vectors = np.repeat(centres, 10, axis=0) + 0.05 * rng.normal(size=(30, 16))
    relevance = np.linspace(1.0, 0.0, 30)  # the first cluster is the most relevant
    assert mmr_order(relevance, vectors, lambda_=1.0) == list(range(30))
    top = 6
    plain = intra_list_diversity(vectors[:top])
    diverse = intra_list_diversity(vectors[mmr_order(relevance, vectors, 0.5, k=top)])
    assert diverse > plain + 0.3
    with pytest.raises(ConfigError, match="lambda_"):
        mmr_order(relevance, vectors, lambda_=1.5)


def test_mmr_rerank_uses_index_vectors(untrained: CrossEncoderRanker, shop: Shop) -> None:
    context = untrained.encode_context(shop.products[:2])
    candidates = [Candidate(p.product_id, 0.0) for p in shop.products[:12]]
    ranked = untrained.rank(context, candidates, shop.by_id)
    assert mmr_rerank(ranked, shop.store, lambda_=1.0) == ranked
    assert len(mmr_rerank(ranked, shop.store, lambda_=0.3, k=5)) == 5


# -- the real base model (the one test that loads MiniLM) ------------------------------


def test_bundled_minilm_gets_a_new_one_logit_head() -> None:
    ranker = CrossEncoderRanker.from_base(RankerConfig(num_layers=2))
    model = ranker.torch_model
    assert ranker.num_layers == 2
    assert model.config.num_labels == 1  # type: ignore[union-attr]
    assert model.classifier.out_features == 1  # type: ignore[union-attr]
    products = {f"q{i}": Product(f"q{i}", title=f"{c} linen shirt") for i, c in enumerate(COLOURS)}
    context = ranker.encode_context([products["q0"], products["q1"]])
    ranked = ranker.rank(context, [Candidate(pid, 0.1) for pid in products], products)
    assert len(ranked) == len(products)
    assert np.isfinite([c.raw_score for c in ranked]).all()
    with pytest.raises(ConfigError, match="num_layers"):
        CrossEncoderRanker.from_base(RankerConfig(num_layers=7))


def test_cli_parses_train_ranker() -> None:
    from newarrivals.service.cli import build_parser

    args = build_parser().parse_args(
        ["train-ranker", "--index", "i", "--catalog", "c", "--out", "o", "--layers", "2"]
    )
    assert args.layers == 2 and args.candidates == 50 and args.device == "auto"
