"""The fast ranker: token cache, student distillation, ONNX Runtime export, one loader."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from newarrivals.indexer.catalog.schema import EventType, Product
from newarrivals.indexer.errors import ConfigError, UnknownProductError
from newarrivals.indexer.index.filters import Candidate
from newarrivals.ranker import (
    CandidateTokenCache,
    Ranker,
    RankerConfig,
    RankingInputError,
    load_ranker,
)
from newarrivals.ranker.base import softmax
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker, TorchPairRanker
from newarrivals.ranker.crossencoder.onnx import OnnxRanker
from newarrivals.ranker.export import export_onnx
from newarrivals.ranker.onnx_sessions import configure_threads
from newarrivals.ranker.student.model import SharedContextRanker
from newarrivals.ranker.student.onnx import OnnxSharedContextRanker
from newarrivals.ranker.training.distill import (
    DistillConfig,
    DistillReport,
    distill_ranker,
    rank_agreement,
)
from newarrivals.ranker.training.lists import TrainingList, build_training_lists, split_by_user
from newarrivals.ranker.training.student_init import StudentConfig, build_student
from newarrivals.ranker.training.trainer import train_ranker

from .conftest import Shop

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
STUDENT = StudentConfig(
    hidden_size=16, num_layers=1, num_heads=2, context_tokens=24, candidate_tokens=12
)
DISTILL = DistillConfig(epochs=8, batch_lists=8, learning_rate=3e-3, patience=8, seed=0)


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop(n_users=120)


@pytest.fixture(scope="module")
def lists(shop: Shop) -> tuple[list[TrainingList], list[TrainingList]]:
    built = build_training_lists(shop.events, shop.by_id, shop.store, TRAIN, max_context_items=4)
    return split_by_user(built, 0.25, seed=0)


@pytest.fixture(scope="module")
def teacher(
    tiny_text_model_dir: Path,
    shop: Shop,
    lists: tuple[list[TrainingList], list[TrainingList]],
) -> CrossEncoderRanker:
    """The tiny 2-layer, 32-wide model fine-tuned on the shop's lists (a teacher with signal).

    Trained up to 8 epochs: with 4, some head initialisations left a teacher so flat that
    its calibrated softmax was uniform and there was nothing to distil (checked on 3 seeds).
    """
    config = RankerConfig(
        base_model=str(tiny_text_model_dir),
        context_tokens=32,
        candidate_tokens=16,
        max_context_items=4,
    )
    ranker = CrossEncoderRanker.from_base(config)
    report = train_ranker(ranker, *lists, shop.by_id, TRAIN)
    assert report.ndcg_after > report.ndcg_before
    return ranker


@pytest.fixture(scope="module")
def distilled(
    teacher: CrossEncoderRanker,
    shop: Shop,
    lists: tuple[list[TrainingList], list[TrainingList]],
) -> tuple[TorchPairRanker, DistillReport]:
    student = build_student(teacher, STUDENT)
    report = distill_ranker(teacher, student, *lists, shop.by_id, DISTILL)
    return student, report


@pytest.fixture(scope="module")
def onnx_dir(
    distilled: tuple[TorchPairRanker, DistillReport], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    student, _ = distilled
    return export_onnx(student, tmp_path_factory.mktemp("onnx") / "student")


def _request(shop: Shop, n: int, offset: int = 0) -> list[Candidate]:
    return [
        Candidate(p.product_id, 1.0 - 0.01 * i)
        for i, p in enumerate(shop.products[offset : offset + n])
    ]


# -- configs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"hidden_size": 130, "num_heads": 4}, "multiple of num_heads"),
        ({"num_layers": 0}, "num_layers"),
        ({"init": "xavier"}, "init"),
        ({"candidate_tokens": 4}, "candidate_tokens"),
        ({"dropout": 1.0}, "dropout"),
        ({"architecture": "lstm"}, "architecture"),
    ],
)
def test_student_config_rejects_bad_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        StudentConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kl_weight": 0, "mse_weight": 0, "label_weight": 0}, "must be > 0"),
        ({"mse_weight": -1.0}, "mse_weight"),
        ({"distill_temperature": 0}, "distill_temperature"),
        ({"batch_lists": 0}, "batch_lists"),
    ],
)
def test_distill_config_rejects_bad_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        DistillConfig(**kwargs)  # type: ignore[arg-type]


def test_configs_round_trip_and_default_intermediate_is_four_times_hidden() -> None:
    assert StudentConfig(hidden_size=64).intermediate_size == 256
    assert StudentConfig.from_dict(json.loads(json.dumps(STUDENT.to_dict()))) == STUDENT
    assert DistillConfig.from_dict(DISTILL.to_dict()) == DISTILL
    with pytest.raises(ConfigError, match="unknown StudentConfig fields"):
        StudentConfig.from_dict({"hidden": 64})


# -- the candidate token cache --------------------------------------------------------


def test_token_cache_matches_plain_tokenising_and_is_bounded(
    teacher: CrossEncoderRanker, shop: Shop
) -> None:
    cache = CandidateTokenCache(teacher.tokenizer, budget=12, max_size=5)
    products = shop.products[:8]
    first = cache.token_ids(products)
    expected = teacher.encode_candidates([_text(p) for p in products])
    assert [list(ids) for ids in first] == [ids[:12] for ids in expected]
    assert all(len(ids) <= 12 for ids in first)
    assert len(cache) == 5 and cache.misses == 8 and cache.hits == 0
    assert cache.token_ids(products[-3:]) == first[-3:]  # still cached: hits
    assert cache.hits == 3
    cache.token_ids(products[:1])  # evicted earlier: a miss
    assert cache.misses == 9


def test_token_cache_retokenises_a_product_whose_text_changed(
    teacher: CrossEncoderRanker, shop: Shop
) -> None:
    cache = CandidateTokenCache(teacher.tokenizer, budget=16)
    product = shop.products[0]
    before = cache.token_ids([product])[0]
    renamed = replace(product, title="purple velvet cape")
    after = cache.token_ids([renamed])[0]
    assert after != before
    assert teacher.tokenizer.decode(list(after)).startswith("purple velvet cape")
    off = CandidateTokenCache(teacher.tokenizer, budget=16, max_size=0)
    assert off.token_ids([product]) == [before] and len(off) == 0


def test_warm_cache_fills_it_once_and_requests_then_only_hit(
    teacher: CrossEncoderRanker, shop: Shop
) -> None:
    ranker = CrossEncoderRanker(teacher.torch_model, teacher.tokenizer, teacher.config)
    assert ranker.warm_cache(iter(shop.products)) == len(shop.products)
    misses = ranker.token_cache.misses
    context = ranker.encode_context(shop.products[:3])
    ranked = ranker.rank(context, _request(shop, 20), shop.by_id)
    assert ranker.token_cache.misses == misses
    plain = ranker.score(context, [_text(shop.by_id[c.product_id]) for c in _request(shop, 20)])
    by_id = {c.product_id: c.raw_score for c in ranked}
    np.testing.assert_allclose([by_id[c.product_id] for c in _request(shop, 20)], plain)


def _word_embeddings(ranker: TorchPairRanker) -> np.ndarray:
    model: Any = ranker.torch_model
    weights: np.ndarray = model.get_input_embeddings().weight.detach().numpy()
    return weights


def _text(product: Product) -> str:
    from newarrivals.ranker import candidate_text

    return candidate_text(product)


# -- the student ------------------------------------------------------------------------


def test_student_is_small_reads_the_teachers_vocabulary_and_starts_from_its_embeddings(
    teacher: CrossEncoderRanker,
) -> None:
    student = build_student(teacher, STUDENT)
    arch = student.architecture
    assert (arch["num_layers"], arch["hidden_size"], arch["intermediate_size"]) == (1, 16, 64)
    assert arch["parameters"] < teacher.architecture["parameters"]
    assert student.tokenizer is teacher.tokenizer
    assert (student.config.context_tokens, student.config.candidate_tokens) == (24, 12)

    def distance_corr(ranker: TorchPairRanker) -> float:
        # Pairwise distances of 300 frequent tokens, student vs teacher.
        ids = np.arange(2000, 2300)
        t = _word_embeddings(teacher)[ids]
        s = _word_embeddings(ranker)[ids]
        dt = np.linalg.norm(t[:, None] - t[None], axis=-1)[np.triu_indices(len(ids), 1)]
        ds = np.linalg.norm(s[:, None] - s[None], axis=-1)[np.triu_indices(len(ids), 1)]
        return float(np.corrcoef(dt, ds)[0, 1])

    random_student = build_student(teacher, replace(STUDENT, init="random"))
    assert distance_corr(student) > distance_corr(random_student) + 0.3
    with pytest.raises(ConfigError, match="hidden_size must be <= 32"):
        build_student(teacher, StudentConfig(hidden_size=64, num_heads=2))


def test_distillation_moves_the_student_toward_the_teacher(
    distilled: tuple[TorchPairRanker, DistillReport],
) -> None:
    _, report = distilled
    assert report.n_train_lists >= 200
    summary = {k: v for k, v in report.to_dict().items() if k != "history"}
    # The PCA-initialised student already shares the teacher's lexical geometry, so it
    # starts with some agreement; distillation must add to it and halve the KL.
    assert report.agreement_after >= report.agreement_before + 0.1, summary
    assert report.kl_after < 0.5 * report.kl_before, summary
    assert report.ndcg_after > report.ndcg_before
    assert report.best_epoch >= 1
    assert report.history[-1].train_loss < report.history[0].train_loss
    assert 0.0 <= report.ece_after_temperature <= 1.0


def test_rank_agreement_on_known_values() -> None:
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    rho, top1 = rank_agreement(a, np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))
    assert rho == pytest.approx(0.0) and top1 == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="shape"):
        rank_agreement(a, a[:1])


def test_student_probabilities_sum_to_one_and_save_load_is_identical(
    distilled: tuple[TorchPairRanker, DistillReport], shop: Shop, tmp_path: Path
) -> None:
    student, report = distilled
    context = student.encode_context(shop.products[5:9])
    ranked = student.rank(context, _request(shop, 30), shop.by_id)
    assert sum(c.probability for c in ranked) == pytest.approx(1.0, abs=1e-9)
    out = student.save(tmp_path / "student", extra={"distill": report.to_dict()})
    manifest = json.loads((out / "ranker.json").read_text())
    assert manifest["architecture"]["hidden_size"] == 16
    assert manifest["temperature"] == student.temperature
    loaded = load_ranker(out)
    assert isinstance(loaded, CrossEncoderRanker)
    assert loaded.rank(context, _request(shop, 30), shop.by_id) == ranked


# -- ONNX Runtime -----------------------------------------------------------------------


def test_onnx_fp32_matches_torch_and_int8_stays_close(
    distilled: tuple[TorchPairRanker, DistillReport], onnx_dir: Path, shop: Shop
) -> None:
    student, _ = distilled
    manifest = json.loads((onnx_dir / "ranker.json").read_text())
    assert manifest["kind"] == "onnx-cross-encoder-ranker"
    assert set(manifest["models"]) == {"fp32", "int8"} and manifest["default_precision"] == "int8"
    fp32 = OnnxRanker.load(onnx_dir, precision="fp32", threads=1)
    int8 = OnnxRanker.load(onnx_dir, precision="int8", threads=1)
    rng = np.random.default_rng(3)
    for n in (1, 7, 50):
        picks = rng.permutation(len(shop.products))[:n]
        candidates = [Candidate(shop.products[int(i)].product_id, 0.0) for i in picks]
        context = student.encode_context(shop.products[int(picks[0]) : int(picks[0]) + 4])
        want = {c.product_id: c for c in student.rank(context, candidates, shop.by_id)}
        got = fp32.rank(context, candidates, shop.by_id)
        assert sum(c.probability for c in got) == pytest.approx(1.0, abs=1e-9)
        for c in got:
            assert c.raw_score == pytest.approx(want[c.product_id].raw_score, abs=1e-4)
            # Probabilities divide by the fitted temperature, which can amplify 1e-5 gaps.
            assert c.probability == pytest.approx(want[c.product_id].probability, rel=5e-3)
        quantised = int8.rank(context, candidates, shop.by_id)
        assert sum(c.probability for c in quantised) == pytest.approx(1.0, abs=1e-9)
        if n == 50:
            q = {c.product_id: c.raw_score for c in quantised}
            rho, _ = rank_agreement(
                np.array([[q[c.product_id] for c in candidates]]),
                np.array([[want[c.product_id].raw_score for c in candidates]]),
            )
            assert rho > 0.5  # a 16-wide toy; the benchmark reports the real NDCG cost


def test_load_ranker_dispatches_on_the_manifest(
    distilled: tuple[TorchPairRanker, DistillReport],
    onnx_dir: Path,
    shop: Shop,
    tmp_path: Path,
) -> None:
    student, _ = distilled
    torch_dir = student.save(tmp_path / "torch")
    rankers = [load_ranker(torch_dir), load_ranker(onnx_dir, threads=1)]
    assert isinstance(rankers[0], CrossEncoderRanker)
    assert isinstance(rankers[1], OnnxRanker) and rankers[1].precision == "int8"
    context = student.encode_context(shop.products[:3])
    for ranker in rankers:
        assert isinstance(ranker, Ranker)
        assert ranker.temperature == pytest.approx(student.temperature)
        again = load_ranker(onnx_dir if isinstance(ranker, OnnxRanker) else torch_dir)
        assert again.rank(context, _request(shop, 12), shop.by_id) == ranker.rank(
            context, _request(shop, 12), shop.by_id
        )
    with pytest.raises(ConfigError, match="not a ranker artifact"):
        load_ranker(tmp_path)
    with pytest.raises(ConfigError, match="precisions"):
        load_ranker(onnx_dir, precision="int4")
    with pytest.raises(ConfigError, match="torch ranker"):
        load_ranker(torch_dir, precision="int8")
    with pytest.raises(ConfigError, match="runs on CPU"):
        load_ranker(onnx_dir, device="cuda")
    odd = tmp_path / "odd"
    odd.mkdir()
    manifest = json.loads((torch_dir / "ranker.json").read_text())
    (odd / "ranker.json").write_text(json.dumps({**manifest, "kind": "xgboost"}))
    with pytest.raises(ConfigError, match="unknown ranker kind 'xgboost'"):
        load_ranker(odd)


def test_onnx_ranker_rejects_bad_requests(onnx_dir: Path, shop: Shop) -> None:
    ranker = load_ranker(onnx_dir, threads=1)
    context = ranker.encode_context(shop.products[:2])
    with pytest.raises(RankingInputError, match="candidate list is empty"):
        ranker.rank(context, [], shop.by_id)
    with pytest.raises(UnknownProductError, match="'nope'"):
        ranker.rank(context, [Candidate("p000", 1.0), Candidate("nope", 0.5)], shop.by_id)
    with pytest.raises(RankingInputError, match="listed twice"):
        ranker.rank(context, [Candidate("p000", 1.0), Candidate("p000", 0.5)], shop.by_id)


def test_export_rejects_unknown_precisions(
    distilled: tuple[TorchPairRanker, DistillReport], tmp_path: Path
) -> None:
    student, _ = distilled
    with pytest.raises(ConfigError, match="precisions"):
        export_onnx(student, tmp_path, precisions=("fp16",))
    with pytest.raises(ConfigError, match="default_precision"):
        export_onnx(student, tmp_path, precisions=("fp32",), default_precision="int8")


def test_configure_threads_sets_torch_and_rejects_nonsense() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        configure_threads(2)
        assert torch.get_num_threads() == 2
        configure_threads(None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads"):
        configure_threads(0)


def test_softmax_is_shift_invariant() -> None:
    z = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(softmax(z), softmax(z + 1000.0))


# -- the shared-context student ----------------------------------------------------------


@pytest.fixture(scope="module")
def shared(
    teacher: CrossEncoderRanker,
    shop: Shop,
    lists: tuple[list[TrainingList], list[TrainingList]],
) -> tuple[TorchPairRanker, DistillReport]:
    student = build_student(teacher, replace(STUDENT, architecture="shared-context"))
    report = distill_ranker(teacher, student, *lists, shop.by_id, DISTILL)
    return student, report


def test_shared_context_scores_equal_the_pair_form_and_ignore_other_candidates(
    teacher: CrossEncoderRanker, shop: Shop
) -> None:
    student = build_student(teacher, replace(STUDENT, architecture="shared-context", seed=4))
    assert isinstance(student, SharedContextRanker)
    context = student.encode_context(shop.products[3:7])
    cands = student.candidate_token_ids(shop.products[20:33])
    split = student.raw_scores(context, cands)
    pairs = student.score_batch(student.pairs([(context.token_ids, c) for c in cands]))
    np.testing.assert_allclose(split, pairs, atol=1e-5)
    assert np.ptp(split) > 0  # not a constant
    # A candidate's score does not depend on which other candidates share the request.
    alone = student.raw_scores(context, cands[4:5])
    np.testing.assert_allclose(alone, split[4:5], atol=1e-5)
    # ...but it does depend on the context.
    other = student.encode_context(shop.products[60:64])
    assert not np.allclose(student.raw_scores(other, cands), split)


def test_shared_context_student_distils_exports_and_round_trips(
    shared: tuple[TorchPairRanker, DistillReport], shop: Shop, tmp_path: Path
) -> None:
    student, report = shared
    summary = {k: v for k, v in report.to_dict().items() if k != "history"}
    assert report.agreement_after >= report.agreement_before + 0.1, summary
    assert report.kl_after < 0.5 * report.kl_before, summary
    context = student.encode_context(shop.products[5:9])
    want = student.rank(context, _request(shop, 40), shop.by_id)
    assert sum(c.probability for c in want) == pytest.approx(1.0, abs=1e-9)
    torch_dir = student.save(tmp_path / "shared")
    assert json.loads((torch_dir / "ranker.json").read_text())["kind"] == "shared-context-ranker"
    assert load_ranker(torch_dir).rank(context, _request(shop, 40), shop.by_id) == want
    onnx_dir = export_onnx(student, tmp_path / "shared-onnx")
    fp32 = load_ranker(onnx_dir, precision="fp32", threads=1)
    int8 = load_ranker(onnx_dir, threads=1)
    assert isinstance(fp32, OnnxSharedContextRanker) and isinstance(int8, OnnxSharedContextRanker)
    assert int8.precision == "int8"
    got = {c.product_id: c for c in fp32.rank(context, _request(shop, 40), shop.by_id)}
    for c in want:
        assert got[c.product_id].raw_score == pytest.approx(c.raw_score, abs=1e-4)
    quantised = int8.rank(context, _request(shop, 40), shop.by_id)
    assert sum(c.probability for c in quantised) == pytest.approx(1.0, abs=1e-9)
    batch = student.pairs(
        [(context.token_ids, c) for c in student.candidate_token_ids(shop.products[:6])]
    )
    np.testing.assert_allclose(fp32.score_batch(batch), student.score_batch(batch), atol=1e-4)


# -- the command line -------------------------------------------------------------------


def test_cli_distill_ranker_end_to_end(
    tiny_text_model_dir: Path,
    synth_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from newarrivals.indexer.catalog.readers import read_catalog
    from newarrivals.indexer.encoders import TextEncoderConfig
    from newarrivals.indexer.index.build import BuildConfig, build_index
    from newarrivals.service.cli import main

    index = tmp_path / "index"
    build_index(
        BuildConfig(
            catalog=synth_dir,
            out=index,
            text=TextEncoderConfig(model=str(tiny_text_model_dir)),
            image=None,
            device="cpu",
            progress=False,
        )
    )
    teacher_config = RankerConfig(
        base_model=str(tiny_text_model_dir), context_tokens=32, candidate_tokens=16
    )
    recipe = RankerTrainConfig(
        positive_events=(EventType.CART, EventType.PURCHASE),  # 40 users: more lists
        hard_negatives=6,
        random_negatives=3,
        retrieval_candidates=20,
        seed=3,
    )
    teacher = CrossEncoderRanker.from_base(teacher_config)
    teacher.save(tmp_path / "teacher", extra={"train_config": recipe.to_dict()})
    out = tmp_path / "student"
    args = ["distill-ranker", "--teacher", str(tmp_path / "teacher"), "--index", str(index),
            "--catalog", str(synth_dir), "--out", str(out), "--hidden", "16", "--layers", "1",
            "--context-tokens", "16", "--candidate-tokens", "8", "--epochs", "1",
            "--threads", "1", "--device", "cpu", "--onnx", "fp32", "int8"]  # fmt: skip
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["list_size"] == recipe.list_size and printed["epochs_run"] == 1
    manifest = json.loads((out / "ranker.json").read_text())
    assert manifest["training"]["train_config"]["seed"] == 3  # the teacher's recipe and split
    assert manifest["architecture"]["hidden_size"] == 16
    products = {p.product_id: p for p in read_catalog(synth_dir).products}
    ids = sorted(products)[:10]
    for ranker in (load_ranker(out), load_ranker(Path(printed["onnx"]), threads=1)):
        context = ranker.encode_context([products[ids[0]]])
        ranked = ranker.rank(context, [Candidate(p, 0.0) for p in ids[1:]], products)
        assert sum(c.probability for c in ranked) == pytest.approx(1.0, abs=1e-9)
    assert main([*args[:2], str(tmp_path / "nowhere"), *args[3:]]) == 2
    assert "not a ranker artifact" in capsys.readouterr().err


def test_cli_distill_ranker_follows_a_cold_start_teachers_recipe(
    tiny_text_model_dir: Path,
    synth_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from newarrivals.service.cli import main

    tiny = str(tiny_text_model_dir)
    cache = str(tmp_path / "cache")
    teacher = tmp_path / "teacher"
    assert main(["train-ranker", "--catalog", str(synth_dir), "--out", str(teacher),
                 "--text-model", tiny, "--base-model", tiny, "--retrieval", "text/max",
                 "--context-tokens", "32", "--candidate-tokens", "16", "--epochs", "1",
                 "--windows", "2", "--window-days", "30", "--hard", "6", "--random", "3",
                 "--candidates", "20", "--positive-events", "purchase,cart",
                 "--cache-dir", cache, "--threads", "1", "--device", "cpu",
                 "--no-progress"]) == 0  # fmt: skip
    recorded = json.loads((teacher / "ranker.json").read_text())["training"]
    assert recorded["lists"] == "cold-start" and recorded["text_model"] == tiny
    capsys.readouterr()
    out = tmp_path / "student"
    assert main(["distill-ranker", "--teacher", str(teacher), "--catalog", str(synth_dir),
                 "--out", str(out), "--cache-dir", cache,
                 "--hidden", "16", "--layers", "1", "--context-tokens", "16",
                 "--candidate-tokens", "8", "--epochs", "1", "--threads", "1",
                 "--device", "cpu"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "ranker.json").read_text())["training"]
    assert manifest["lists"] == "cold-start" and manifest["cutoff"] == recorded["cutoff"]
    # The lists were rebuilt with the teacher's text model, not the bundled default.
    assert manifest["text_model"] == tiny
    assert printed["list_size"] == 10 and printed["n_train_lists"] > 0
    assert isinstance(load_ranker(out), CrossEncoderRanker)
