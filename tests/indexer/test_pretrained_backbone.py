"""The image tower starts from packaged ImageNet EfficientNet-Lite0 weights and trains the
head first, then the backbone's top stages, leaving the frozen ones exactly as loaded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from newarrivals.indexer import ConfigError
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.towers.image_config import CONFIG_FILE, WEIGHTS_FILE, ImageTowerConfig
from newarrivals.indexer.towers.image_model import (
    backbone_stage,
    load_matching_weights,
    model_config,
    new_model,
)
from newarrivals.indexer.towers.image_training import train_image_tower
from newarrivals.indexer.towers.pretrained import imagenet_state_dict

LITE0 = ImageTowerConfig(
    architecture="efficientnet-lite0",
    image_size=32,
    batch_size=16,
    max_minutes=2.0,
    max_epochs=2,
    warmup_steps=1,
    valid_fraction=0.0,  # keep the last checkpoint: random texts give no held-out signal
    augment=False,
    device="cpu",
    workers=2,
)


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> list[Product]:
    from newarrivals.indexer.catalog.synth import SynthConfig, generate, write_synthetic

    out = tmp_path_factory.mktemp("lite0-synth")
    write_synthetic(generate(SynthConfig(n_products=48, n_users=3, seed=5)), out, progress=False)
    return read_catalog(out).products


@pytest.fixture(scope="module")
def imagenet() -> dict[str, torch.Tensor]:
    return imagenet_state_dict("efficientnet-lite0")


def _text(products: list[Product]) -> np.ndarray:
    rng = np.random.default_rng(0)
    out: np.ndarray = rng.standard_normal((len(products), 8)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def test_imagenet_weights_fill_the_whole_backbone(imagenet: dict[str, torch.Tensor]) -> None:
    model = new_model(model_config(LITE0, 8), seed=0)
    trunk = {k: v for k, v in model.state_dict().items() if k.startswith("visual.trunk.")}
    assert set(imagenet) == set(trunk)
    load_matching_weights(model, imagenet, "imagenet")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in imagenet.items())
    # Real statistics, not a fresh network's zeros and ones.
    assert float(loaded["visual.trunk.bn2.running_var"].mean()) > 2.0


def _changed(tower: Path, start: dict[str, torch.Tensor]) -> set[str]:
    saved = load_file(str(tower / WEIGHTS_FILE))
    return {k for k, v in start.items() if not torch.equal(saved[k], v)}


def test_head_only_training_leaves_the_backbone_as_loaded(
    products: list[Product], imagenet: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    config = replace(LITE0, head_only_fraction=1.0)
    train_image_tower(products, _text(products), config, tmp_path / "t", progress=False)
    # Weights and batch-norm running statistics of every backbone layer are untouched.
    assert _changed(tmp_path / "t", imagenet) == set()
    saved = load_file(str(tmp_path / "t" / WEIGHTS_FILE))
    fresh = new_model(model_config(config, 8), seed=config.seed).state_dict()
    assert not torch.equal(saved["visual.head.proj.weight"], fresh["visual.head.proj.weight"])
    preprocess = json.loads((tmp_path / "t" / CONFIG_FILE).read_text())["preprocess_cfg"]
    assert preprocess["mean"] == [0.5, 0.5, 0.5] and preprocess["std"] == [0.5, 0.5, 0.5]


def test_after_the_head_phase_only_the_top_stages_train(
    products: list[Product], imagenet: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    config = replace(LITE0, head_only_fraction=0.4, train_top_blocks=2, max_epochs=3)
    train_image_tower(products, _text(products), config, tmp_path / "t", progress=False)
    changed = _changed(tmp_path / "t", imagenet)
    stages = {backbone_stage(k, 7) for k in changed}
    # Stage 0 is the final 1x1 convolution, stage 1 the last block: both trained; nothing
    # below them moved.
    assert stages == {0, 1}, sorted(changed)[:5]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, ("imagenet", 0.3, 3, 0.1)),
        ({"init": "scratch"}, ("scratch", 0.0, None, 1.0)),
        ({"init": "imagenet", "train_top_blocks": 5}, ("imagenet", 0.3, 5, 0.1)),
    ],
)
def test_schedule_defaults_follow_the_start(
    changes: dict[str, object], expected: tuple[object, ...]
) -> None:
    config = ImageTowerConfig(architecture="efficientnet-lite0", **changes)  # type: ignore[arg-type]
    got = (
        config.init,
        config.head_only_fraction,
        config.train_top_blocks,
        config.backbone_lr_scale,
    )
    assert got == expected
    assert ImageTowerConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architecture": "vit-micro", "init": "imagenet"}, "packaged ImageNet weights"),
        ({"architecture": "vit-micro", "train_top_blocks": 2}, "staged backbone"),
        ({"head_only_fraction": 1.5}, r"head_only_fraction must be a number in \[0, 1\]"),
        ({"backbone_lr_scale": 0.0}, "backbone_lr_scale must be a finite number > 0"),
    ],
)
def test_schedule_validation(changes: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"architecture": "efficientnet-lite0", **changes}
    with pytest.raises(ConfigError, match=message):
        ImageTowerConfig(**settings)  # type: ignore[arg-type]
