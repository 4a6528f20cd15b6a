"""The two-stage evaluation method: retrieve the top N cold items, re-rank, MMR, margins."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from newarrivals.indexer.catalog.schema import Catalog, EventType, Interaction, Product
from newarrivals.indexer.encoders.text import TextEncoderConfig
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation import EvaluateConfig, evaluate
from newarrivals.indexer.evaluation.methods import EvalData, ProductVectors
from newarrivals.indexer.evaluation.metrics import MetricSpec
from newarrivals.indexer.evaluation.protocol import split_catalog
from newarrivals.ranker import RankerConfig
from newarrivals.ranker.blend import Blend
from newarrivals.ranker.context import UserContext
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker
from newarrivals.ranker.training.features import recent_products, retrieval_method, top_candidates
from newarrivals.ranker.two_stage import TwoStageConfig, TwoStageRun, rerank_margins

CUTOFF = datetime(2024, 3, 1, tzinfo=UTC)


class WordRanker:
    """A stand-in ranker: scores a candidate 1 when its text holds ``word``, else 0."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.calls = 0

    def encode_context(self, recent: Sequence[Product]) -> UserContext:
        return UserContext(text="", token_ids=(), product_ids=tuple(p.product_id for p in recent))

    def score(self, context: UserContext, candidate_texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.array([float(self.word in t) for t in candidate_texts])


def _data(n_users: int = 12, seed: int = 0) -> EvalData:
    rng = np.random.default_rng(seed)
    products = {}
    for i in range(60):
        colour = ("red", "blue")[i % 2]
        products[f"old{i}"] = Product(f"old{i}", title=f"{colour} old thing {i}")
        products[f"new{i}"] = Product(f"new{i}", title=f"{colour} new thing {i}")
    events = []
    for u in range(n_users):
        for j in range(3):
            when = CUTOFF - timedelta(days=10 - j)
            pid = f"old{int(rng.integers(60))}"
            events.append(Interaction(f"u{u}", pid, EventType.PURCHASE, when))
        for j in range(2):
            pid = f"new{int(rng.integers(60))}"
            events.append(Interaction(f"u{u}", pid, EventType.PURCHASE, CUTOFF + timedelta(days=j)))
    split = split_catalog(Catalog(list(products.values()), events), CUTOFF)
    ids = sorted(products)
    vectors = rng.normal(size=(len(ids), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pv = ProductVectors(ids, vectors, np.ones(len(ids), dtype=bool))
    return EvalData(split=split, products=products, vectors={"text": pv})


def _rank(scores: np.ndarray) -> list[list[int]]:
    return [np.argsort(-row, kind="stable").tolist() for row in scores]


def test_two_stage_rows_are_valid_rankings_that_only_reorder_the_head() -> None:
    data = _data()
    ranker = WordRanker("red")
    run = TwoStageRun(
        ranker, TwoStageConfig(retrieval="text/max", depths=(10, 20), mmr_lambda=None)
    )
    rows = run.methods()
    assert [m.name for m in rows] == [
        "retrieval alone (text/max)",
        "two-stage N=10: ranker",
        "two-stage N=20: ranker",
    ]
    retrieval = retrieval_method("text/max", data.vectors).score(data)
    base = _rank(rows[0].score(data))
    assert base == _rank(retrieval)
    for method, depth in zip(rows[1:], (10, 20), strict=True):
        scores = method.score(data)
        assert scores.shape == (data.n_users, data.n_items)
        assert np.isfinite(scores).all()
        for u, order in enumerate(_rank(scores)):
            assert sorted(order) == list(range(data.n_items))  # a permutation
            head = order[:depth]
            assert set(head) == set(base[u][:depth])  # the same candidates ...
            assert order[depth:] == base[u][depth:]  # ... and the tail untouched
            texts = [data.products[data.split.cold_ids[i]].title for i in head]
            flags = ["red" in t for t in texts]
            assert flags == sorted(flags, reverse=True)  # red first, as the ranker wants
    # The ranker scored each user once, for the deepest list only.
    assert ranker.calls == data.n_users


def test_a_zero_ranker_weight_gives_the_retrieval_order() -> None:
    data = _data()
    blend = Blend(("ranker", "retrieval"), (0.0, 1.0))
    run = TwoStageRun(
        WordRanker("red"),
        TwoStageConfig(retrieval="text/max", depths=(15,), mmr_lambda=None),
        blend=blend,
    )
    reference, ranker_only, blended = run.methods()
    assert blended.name == "two-stage N=15: ranker+blend"
    assert _rank(blended.score(data)) == _rank(reference.score(data))
    assert _rank(ranker_only.score(data)) != _rank(reference.score(data))


def test_features_blend_row_orders_by_the_prior_without_the_ranker() -> None:
    data = _data()
    # The prior weighs the mean-vector similarity only; the fitted blend adds the ranker.
    blend = Blend(("ranker", "retrieval", "text-mean"), (2.0, 0.0, 1.0), prior=(0.0, 0.0, 1.0))
    assert blend.prior_blend() is None  # one weighted feature: that feature's own order
    blend = Blend(("ranker", "retrieval", "text-mean"), (2.0, 0.5, 1.0), prior=(0.0, 0.5, 1.0))
    run = TwoStageRun(
        WordRanker("red"),
        TwoStageConfig(retrieval="text/max", depths=(15,), mmr_lambda=None),
        blend=blend,
    )
    rows = run.methods()
    assert [m.name for m in rows][2:] == [
        "two-stage N=15: ranker+blend",
        "two-stage N=15: features blend (no ranker)",
    ]
    features_only = _rank(rows[3].score(data))
    columns = {
        "retrieval": retrieval_method("text/max", data.vectors).score(data),
        "text-mean": retrieval_method("text/mean", data.vectors).score(data),
    }
    reference = _rank(rows[0].score(data))
    prior = blend.prior_blend()
    assert prior is not None and prior.weights == (0.0, 0.5, 1.0)
    for u, order in enumerate(features_only):
        head = reference[u][:15]
        x = np.stack([np.zeros(15), *(columns[k][u, head] for k in ("retrieval", "text-mean"))])
        expected = [head[i] for i in np.argsort(-prior.score(x.T), kind="stable")]
        assert order[:15] == expected
    # The ranker's word moves the full blend away from the features-only order.
    assert _rank(rows[2].score(data)) != features_only


def test_mmr_row_raises_diversity_and_margins_are_paired() -> None:
    data = _data(n_users=20, seed=3)
    run = TwoStageRun(
        WordRanker("red"),
        TwoStageConfig(retrieval="text/max", depths=(30,), mmr_lambda=0.3, diversity_k=10),
        blend=Blend(("ranker", "retrieval"), (1.0, 1.0)),
    )
    names = [m.name for m in run.methods()]
    assert names[-1] == "two-stage N=30: ranker+blend+MMR(0.3)"
    for method in run.methods():
        method.score(data)
    diversity = run.diversity
    assert diversity[names[-1]] > diversity[names[2]]  # MMR vs the same blend without it
    assert run.info()["n_reranked_users"] == 20


def test_user_sample_reranks_only_the_sampled_users() -> None:
    data = _data(n_users=12)
    ranker = WordRanker("blue")
    run = TwoStageRun(
        ranker,
        TwoStageConfig(retrieval="text/max", depths=(10,), mmr_lambda=None, max_users=5, seed=1),
    )
    reference, reranked = run.methods()
    a, b = _rank(reference.score(data)), _rank(reranked.score(data))
    mask = run.user_mask
    assert mask.sum() == 5 and ranker.calls == 5
    assert all(a[u] == b[u] for u in np.flatnonzero(~mask))


def test_two_stage_config_and_inputs_are_checked() -> None:
    with pytest.raises(ConfigError, match="retrieval must be one of"):
        TwoStageConfig(retrieval="bm25/max")
    with pytest.raises(ConfigError, match="depths"):
        TwoStageConfig(depths=())
    with pytest.raises(ConfigError, match="mmr_lambda"):
        TwoStageConfig(mmr_lambda=1.5)
    with pytest.raises(ConfigError, match="image"):
        retrieval_method("fused-late/max", _data().vectors)
    with pytest.raises(ConfigError, match="unknown"):
        TwoStageRun(WordRanker("x"), TwoStageConfig(), blend=Blend(("photo",), (1.0,)))
    assert TwoStageConfig(depths=(100, 50, 50)).depths == (50, 100)
    assert top_candidates([0.5, -np.inf, 0.9, 0.5], 3).tolist() == [2, 0, 3]


def test_recent_products_are_newest_first_unique_and_with_text() -> None:
    products = {
        "a": Product("a", title="linen shirt"),
        "b": Product("b"),  # no text at all: takes no context slot
        "c": Product("c", title="wool coat"),
    }
    t = CUTOFF
    history = [
        Interaction("u", "a", EventType.VIEW, t),
        Interaction("u", "c", EventType.VIEW, t + timedelta(hours=1)),
        Interaction("u", "b", EventType.VIEW, t + timedelta(hours=2)),
        Interaction("u", "a", EventType.PURCHASE, t + timedelta(hours=3)),
        Interaction("u", "zzz", EventType.VIEW, t + timedelta(hours=4)),
    ]
    assert [p.product_id for p in recent_products(history, products, 5)] == ["a", "c"]
    assert [p.product_id for p in recent_products(history, products, 1)] == ["a"]


def test_evaluate_runs_the_two_stage_rows_with_a_real_ranker(
    synth_dir: Path, tiny_text_model_dir: Path, tmp_path: Path
) -> None:
    ranker = CrossEncoderRanker.from_base(
        RankerConfig(base_model=str(tiny_text_model_dir), context_tokens=24, candidate_tokens=12)
    )
    run = TwoStageRun(
        ranker,
        TwoStageConfig(retrieval="text/max", depths=(10,), mmr_lambda=0.7),
        # The ranker at weight 0 over a features prior: the blend row is the features row.
        blend=Blend(("ranker", "retrieval", "text-mean"), (0.0, 1.0, 0.5), prior=(0.0, 1.0, 0.5)),
        label="tiny",
    )
    report = evaluate(
        EvaluateConfig(
            data=synth_dir,
            text=TextEncoderConfig(model=str(tiny_text_model_dir)),
            user_tower=False,
            seeds=2,
            spec=MetricSpec(ks=(10, 20)),
            reports_dir=tmp_path,
            cache_dir=tmp_path / "cache",
            device="cpu",
            progress=False,
        ),
        extra_methods=run.methods(),
    )
    names = [r.name for r in report.results]
    assert "retrieval alone (text/max)" in names
    assert "two-stage N=10: tiny+blend+MMR(0.7)" in names
    by_name = {r.name: r for r in report.results}
    blended, features = "two-stage N=10: tiny+blend", "two-stage N=10: features blend (no tiny)"
    assert by_name[blended].metrics == pytest.approx(by_name[features].metrics)
    assert by_name["retrieval alone (text/max)"].metrics == pytest.approx(
        by_name["text / max similarity"].metrics
    )
    margins = rerank_margins(report.results, run)
    assert {m.metric for m in margins} == {"ndcg@20", "recall@20"}
    ndcg = [m for m in margins if m.metric == "ndcg@20"]
    assert {m.reference for m in ndcg} == {"retrieval alone (text/max)", features}
    # The ranker's own contribution (blend minus features blend) is exactly nothing here.
    own = next(m for m in ndcg if m.method == blended and m.reference == features)
    assert own.margin == pytest.approx(0.0) and own.stderr == pytest.approx(0.0)
    assert own.n_users == len(report.results[0].per_user.values["ndcg@20"])
    versus = next(m for m in ndcg if m.method == blended and m.reference != features)
    assert versus.method_value == pytest.approx(by_name[blended].metrics["ndcg@20"])


def test_cli_trains_a_ranker_and_evaluates_it_in_two_stages(
    synth_dir: Path, tiny_text_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from newarrivals.service.cli import main

    out, reports, cache = tmp_path / "rk", tmp_path / "reports", tmp_path / "cache"
    common = ["--text-model", str(tiny_text_model_dir), "--cache-dir", str(cache)]
    code = main(
        [
            "train-ranker", "--catalog", str(synth_dir), "--out", str(out),
            "--base-model", str(tiny_text_model_dir), "--retrieval", "text/max",
            "--windows", "2", "--window-days", "30", "--hard", "4", "--random", "2",
            "--candidates", "10", "--context-tokens", "24", "--candidate-tokens", "12",
            "--epochs", "1", "--val-fraction", "0.4", "--device", "cpu", "--no-progress",
            *common,
        ]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_train_lists"] > 0 and printed["steps"] > 0
    assert (out / "ranker.json").is_file()
    manifest = json.loads((out / "ranker.json").read_text())
    assert manifest["training"]["lists"] == "cold-start"
    code = main(
        [
            "evaluate", "--data", str(synth_dir), "--no-user-tower", "--seeds", "1",
            "--reports", str(reports), "--device", "cpu", "--no-progress",
            "--ranker", str(out), "--rerank-n", "10", "--rerank-retrieval", "text/max",
            *common,
        ]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "two-stage N=10: rk" in text and "margin" in text
    saved = json.loads(next(reports.glob("rerank-*.json")).read_text())
    assert saved["run"]["depths"] == [10]
    assert {m["metric"] for m in saved["margins"]} == {"ndcg@20", "recall@20"}
    assert (
        main(["evaluate", "--data", str(synth_dir), "--ranker", str(out), "--rerank-n", "x"]) == 2
    )
