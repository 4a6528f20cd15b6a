"""The image tower learns to put a photo near its own product's text.

Text vectors here are made from the synthetic catalogue's known attributes (a fixed random
code per type, colour and pattern, plus per-product noise): deterministic, instant, and
learnable from the pixels, which draw exactly those attributes. One tiny tower is trained
once per session and shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from newarrivals.indexer import ConfigError
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.encoders import (
    FusionConfig,
    FusionMode,
    ImageEncoder,
    ImageEncoderConfig,
    fused_dim,
)
from newarrivals.indexer.towers.image_config import (
    ARCHITECTURES,
    TOWER_MANIFEST,
    ImageTowerConfig,
    ImageTowerReport,
)
from newarrivals.indexer.towers.image_training import image_text_recall, train_image_tower

TEXT_DIM = 32
TINY = ImageTowerConfig(
    architecture="vit-micro",
    image_size=32,
    batch_size=64,
    lr=3e-3,
    max_minutes=3.0,
    max_epochs=14,
    warmup_steps=5,
    valid_fraction=0.3,
    device="cpu",
    workers=2,
)


@dataclass(frozen=True)
class Trained:
    products: list[Product]
    text: np.ndarray
    tower: Path
    report: ImageTowerReport


def _attribute_text_vectors(products: list[Product]) -> np.ndarray:
    rng = np.random.default_rng(0)
    codes: dict[tuple[str, str], np.ndarray] = {}

    def code(key: str, value: str) -> np.ndarray:
        if (key, value) not in codes:
            codes[(key, value)] = rng.standard_normal(TEXT_DIM)
        return codes[(key, value)]

    rows = []
    for p in products:
        a = p.attributes
        v = code("type", a["type"]) + code("colour", a["colour"]) + code("pattern", a["pattern"])
        rows.append(v + 0.3 * rng.standard_normal(TEXT_DIM))
    out = np.asarray(rows, dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    # Products without text have no text vector (zero rows are ignored by training).
    out[[not p.has_text for p in products]] = 0.0
    return out


@pytest.fixture(scope="session")
def tower_catalog(tmp_path_factory: pytest.TempPathFactory) -> list[Product]:
    """240 synthetic products, ~12% of them photo-only."""
    from newarrivals.indexer.catalog.synth import SynthConfig, generate, write_synthetic

    out = tmp_path_factory.mktemp("tower-synth")
    synth = generate(SynthConfig(n_products=240, n_users=5, seed=11, no_text_fraction=0.12))
    write_synthetic(synth, out, progress=False)
    return read_catalog(out).products


@pytest.fixture(scope="session")
def trained(tower_catalog: list[Product], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    text = _attribute_text_vectors(tower_catalog)
    tower = tmp_path_factory.mktemp("tower") / "vit-micro"
    report = train_image_tower(tower_catalog, text, TINY, tower, progress=False)
    return Trained(tower_catalog, text, tower, report)


def _encode(tower: Path, products: list[Product]) -> np.ndarray:
    encoder = ImageEncoder(ImageEncoderConfig(model=f"local-dir:{tower}"))
    result = encoder.encode_paths([str(p.image) for p in products])
    assert result.ok.all(), result.failures
    return result.vectors


def test_trained_tower_puts_photos_near_their_own_text(trained: Trained) -> None:
    r = trained.report
    chance = 10 / r.n_valid
    assert r.n_valid >= 50 and r.n_train >= 100
    # The untrained tower is near chance; the trained one far above it, on held-out products.
    assert r.valid_untrained["R@10"] < 2 * chance
    assert r.valid_trained["R@10"] > max(3 * chance, r.valid_untrained["R@10"] + 0.2), r
    assert r.valid_trained["R@1"] > r.valid_untrained["R@1"]
    assert r.valid_initial == r.valid_untrained
    assert r.embed_dim == TEXT_DIM and r.steps > 0 and r.images_per_second > 0


def test_artifact_round_trip_matches_training_eval(trained: Trained) -> None:
    import open_clip
    import torch

    from newarrivals.indexer.towers.image_photos import decode_photo

    manifest = json.loads((trained.tower / TOWER_MANIFEST).read_text())
    assert manifest["report"]["valid_trained"] == trained.report.valid_trained
    assert manifest["config"] == TINY.to_dict()
    by_id = {p.product_id: i for i, p in enumerate(trained.products)}
    rows = [by_id[pid] for pid in manifest["held_out_product_ids"]["valid"]]
    assert len(rows) == trained.report.n_valid

    # Serving (ImageEncoder: pad, open_clip preprocess) reproduces the held-out recall...
    vectors = _encode(trained.tower, [trained.products[i] for i in rows])
    assert vectors.shape == (len(rows), TEXT_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    recall = image_text_recall(vectors, trained.text[rows])
    for k, v in trained.report.valid_trained.items():
        assert abs(recall[k] - v) <= 1 / len(rows) + 1e-9, (k, recall[k], v)

    # ...and the same vectors as the training cache's preprocessing.
    model = open_clip.create_model(f"local-dir:{trained.tower}").eval()
    cached = np.stack([decode_photo(str(trained.products[i].image), 32) for i in rows[:16]])
    x = torch.from_numpy(cached).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        feats = torch.nn.functional.normalize(model.encode_image((x - mean) / std), dim=-1)
    np.testing.assert_allclose(vectors[:16], feats.numpy(), atol=1e-4)


def test_photo_only_products_land_in_the_text_space(trained: Trained) -> None:
    photo_only = [p for p in trained.products if p.has_image and not p.has_text]
    with_text = [i for i, p in enumerate(trained.products) if p.has_text]
    assert len(photo_only) >= 15
    vectors = _encode(trained.tower, photo_only)
    assert vectors.shape[1] == trained.text.shape[1]
    assert fused_dim(FusionConfig(mode=FusionMode.SUM), TEXT_DIM, vectors.shape[1]) == TEXT_DIM
    # Their nearest texts describe the same garment far more often than chance. The colour
    # is what a two-layer ViT at 32 px learns first (silhouettes take longer than a test's
    # budget), so that is the attribute checked: chance is 1/11.
    nearest = np.argsort(-(vectors @ trained.text[with_text].T), axis=1)[:, :5]
    same_colour = [
        np.mean(
            [
                trained.products[with_text[j]].attributes["colour"] == p.attributes["colour"]
                for j in row
            ]
        )
        for p, row in zip(photo_only, nearest, strict=True)
    ]
    assert float(np.mean(same_colour)) > 0.4, same_colour


def test_fine_tuning_starts_from_the_saved_tower(trained: Trained, tmp_path: Path) -> None:
    config = replace(TINY, init=f"local-dir:{trained.tower}", max_epochs=1)
    report = train_image_tower(
        trained.products, trained.text, config, tmp_path / "ft", progress=False
    )
    assert report.valid_initial == trained.report.valid_trained
    assert report.valid_untrained == trained.report.valid_untrained
    assert report.valid_initial != report.valid_untrained
    # Loading the bare safetensors file works the same way.
    config = replace(config, init=str(trained.tower / "open_clip_model.safetensors"))
    again = train_image_tower(
        trained.products, trained.text, config, tmp_path / "ft2", progress=False
    )
    assert again.valid_initial == trained.report.valid_trained


def test_init_from_another_architecture_is_refused(trained: Trained, tmp_path: Path) -> None:
    config = replace(TINY, architecture="mobilenetv3-small", init=str(trained.tower))
    with pytest.raises(ConfigError, match="no visual tensor matching"):
        train_image_tower(trained.products, trained.text, config, tmp_path / "x", progress=False)


def test_out_dir_that_is_not_a_tower_is_not_overwritten(trained: Trained, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an image tower"):
        train_image_tower(
            trained.products, trained.text, replace(TINY, max_epochs=1), tmp_path, progress=False
        )
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_align_images_cli_end_to_end(
    synth_dir: Path, tiny_text_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from newarrivals.indexer.catalog.synth import load_ground_truth
    from newarrivals.service.cli import main

    cutoff = load_ground_truth(synth_dir).cutoff
    out = tmp_path / "tower"
    code = main(
        [
            "align-images",
            "--catalog",
            str(synth_dir),
            "--out",
            str(out),
            "--arch",
            "vit-micro",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--text-model",
            str(tiny_text_model_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--launched-before",
            cutoff.date().isoformat(),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out image->text" in printed and "photo-only products" in printed
    report = json.loads((out / TOWER_MANIFEST).read_text())["report"]
    assert report["embed_dim"] == 32  # the tiny text model's dim
    assert report["n_test"] > 0 and report["launched_before"] == f"{cutoff.date()}T00:00:00+00:00"
    encoder = ImageEncoder(ImageEncoderConfig(model=f"local-dir:{out}"))
    assert encoder.dim == 32
    catalog = read_catalog(synth_dir)
    photo_only = [p for p in catalog.products if p.has_image and not p.has_text]
    assert f"{len(photo_only)} of {len(photo_only)} embedded" in printed


def test_image_text_recall() -> None:
    eye = np.eye(4, dtype=np.float32)
    assert image_text_recall(eye, eye, ks=(1, 2)) == {"R@1": 1.0, "R@2": 1.0}
    # Image 0 looks most like text 1: its own text ranks second.
    images = eye.copy()
    images[0] = [0.6, 0.8, 0.0, 0.0]
    assert image_text_recall(images, eye, ks=(1, 2)) == {"R@1": 0.75, "R@2": 1.0}
    # Two products sharing one text: a tie with the own text is not a miss.
    texts = eye.copy()
    texts[1] = texts[0]
    assert image_text_recall(texts, texts, ks=(1,)) == {"R@1": 1.0}
    assert image_text_recall(np.zeros((0, 4)), np.zeros((0, 4))) == {}
    with pytest.raises(ValueError, match="row-aligned"):
        image_text_recall(eye, eye[:3])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architecture": "vgg99"}, "unknown architecture 'vgg99'; choose one of mobilenetv3"),
        ({"architecture": "open_clip:NoSuchModel"}, "open_clip has no model config"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"image_size": 0}, "image_size must be a positive integer, got 0"),
        ({"lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
        ({"max_minutes": float("nan")}, "max_minutes must be a finite number > 0"),
        ({"valid_fraction": 1.0}, r"valid_fraction must be a number in \[0, 1\), got 1.0"),
        ({"valid_size": 0}, "valid_size must be a positive integer, got 0"),
        ({"patience": 0}, "patience must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"init": "weights.pt"}, "pickled checkpoint"),
        ({"init": "laion2b_s34b_b79k"}, "has no pretrained tags"),
    ],
)
def test_config_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageTowerConfig(**changes)  # type: ignore[arg-type]


def test_config_round_trip_and_registry() -> None:
    config = ImageTowerConfig(architecture="vit-tiny", init="local-dir:/somewhere", seed=3)
    assert ImageTowerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown ImageTowerConfig fields"):
        ImageTowerConfig.from_dict({"archtecture": "vit-tiny"})
    assert {"mobilenetv3-small", "vit-tiny", "vit-micro"} <= set(ARCHITECTURES)
    # A pretrained tag is accepted with an open_clip architecture (loaded only at train time).
    tagged = ImageTowerConfig(architecture="open_clip:ViT-B-32", init="laion2b_s34b_b79k")
    assert tagged.init == "laion2b_s34b_b79k"
