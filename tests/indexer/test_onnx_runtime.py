"""ONNX copies of the encoders: same vectors as torch, used by refreshes, torch never imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.writers import write_catalog
from newarrivals.indexer.encoders import (
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)
from newarrivals.indexer.encoders.onnx_encoders import (
    MODEL_FILE,
    OnnxImageEncoder,
    OnnxTextEncoder,
    export_folder,
    export_image,
    export_text,
    image_recipe,
    load_image_export,
    load_text_export,
)
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.build import BuildConfig, build_index
from newarrivals.indexer.index.version import IndexVersion

TEXTS = [
    "red striped cotton t-shirt",
    "  navy wool coat with a long description that goes on " + "and on " * 40,
    "x",
    "blue denim jeans, slim fit",
]


def _photos(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for i, size in enumerate([(60, 90), (90, 60), (64, 64), (33, 101)]):
        p = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_text_copy_reproduces_torch_vectors(tiny_text_model_dir: Path, tmp_path: Path) -> None:
    torch_enc = TextEncoder(TextEncoderConfig(model=str(tiny_text_model_dir), max_seq_length=16))
    assert export_text(torch_enc, tmp_path, TEXTS) == export_folder(tmp_path, torch_enc.encoder_id)
    copy = load_text_export(tmp_path, torch_enc.encoder_id)
    assert isinstance(copy, OnnxTextEncoder)
    assert copy.encoder_id == torch_enc.encoder_id and copy.dim == torch_enc.dim
    # Batched with padding, alone, and truncated: all within float rounding of torch.
    np.testing.assert_allclose(copy.encode(TEXTS), torch_enc.encode(TEXTS), atol=1e-4)
    np.testing.assert_allclose(copy.encode(TEXTS[1:2]), torch_enc.encode(TEXTS[1:2]), atol=1e-4)
    assert copy.encode([]).shape == (0, torch_enc.dim)
    # Another encoder's id never picks this copy up.
    assert load_text_export(tmp_path, torch_enc.encoder_id + "-other") is None


def test_tampered_copy_is_ignored(tiny_text_model_dir: Path, tmp_path: Path) -> None:
    torch_enc = TextEncoder(TextEncoderConfig(model=str(tiny_text_model_dir)))
    folder = export_text(torch_enc, tmp_path, TEXTS)
    assert folder is not None
    with (folder / MODEL_FILE).open("ab") as f:
        f.write(b"\0")
    assert load_text_export(tmp_path, torch_enc.encoder_id) is None


def test_image_copy_reproduces_torch_vectors(tiny_clip_dir: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    for pad in (True, False):
        torch_enc = ImageEncoder(
            ImageEncoderConfig(model=f"local-dir:{tiny_clip_dir}", pad_to_square=pad)
        )
        assert export_image(torch_enc, tmp_path / "cache", photos) is not None
        copy = load_image_export(tmp_path / "cache", torch_enc.encoder_id)
        assert isinstance(copy, OnnxImageEncoder)
        paths = [*photos, tmp_path / "missing.png"]
        got, want = copy.encode_paths(paths), torch_enc.encode_paths(paths)
        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-4)
        assert got.ok.tolist() == want.ok.tolist() == [True, True, True, True, False]
        assert 4 in got.failures and "not found" in got.failures[4]
        images = [Image.open(p) for p in photos]
        np.testing.assert_allclose(
            copy.encode_images(images), torch_enc.encode_images(images), atol=1e-4
        )


def test_builtin_vit_tower_exports(tmp_path: Path) -> None:
    # The ViT's attention has a fused inference kernel with no ONNX form; export avoids it.
    torch_enc = ImageEncoder(ImageEncoderConfig(model="builtin:tiny"))
    photos = _photos(tmp_path)
    assert export_image(torch_enc, tmp_path / "cache", photos) is not None
    copy = load_image_export(tmp_path / "cache", torch_enc.encoder_id)
    assert copy is not None
    np.testing.assert_allclose(
        copy.encode_paths(photos).vectors, torch_enc.encode_paths(photos).vectors, atol=1e-4
    )


def test_unreplayable_preprocessing_is_declined_with_a_reason() -> None:
    from torchvision import transforms as tv

    assert "RandomCrop" in str(image_recipe(tv.Compose([tv.Resize(64), tv.RandomCrop(64)])))
    assert "fixed (h, w)" in str(image_recipe(tv.Compose([tv.Resize((64, 32)), tv.CenterCrop(32)])))
    assert "lacks" in str(image_recipe(tv.Compose([tv.Resize(64)])))
    assert "not a torchvision Compose" in str(image_recipe(lambda x: x))


def test_bad_runtime_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="encoder_runtime must be one of auto, torch"):
        BuildConfig(catalog=tmp_path, out=tmp_path, encoder_runtime="tensorrt")


def _change_titles(catalog_dir: Path, every: int) -> list[str]:
    catalog = read_catalog(catalog_dir)
    changed, products = [], []
    for i, p in enumerate(catalog.products):
        if i % every == 0 and p.title:
            p = replace(p, title=p.title + " (refreshed)")
            changed.append(p.product_id)
        products.append(p)
    write_catalog(replace(catalog, products=products), catalog_dir)
    return changed


def test_refresh_encodes_changes_with_the_copies_and_matches_torch(
    config: BuildConfig, synth_dir: Path
) -> None:
    shutil.copytree(synth_dir, config.catalog)
    first = IndexVersion.load(build_index(config).version_dir)
    assert first.manifest.encoders.text is not None
    assert first.manifest.encoders.text.runtime == "torch"
    changed = _change_titles(config.catalog, every=10)
    second = IndexVersion.load(build_index(config).version_dir)
    assert second.manifest.encoders.text is not None
    assert second.manifest.encoders.text.runtime == "onnx"
    assert second.manifest.encoders.image is not None
    assert second.manifest.encoders.image.runtime == "onnx"
    assert second.manifest.stats["text"]["encoded"] == len(changed)
    # The same catalogue built with torch only, in a fresh cache, gives the same vectors.
    torch_cfg = replace(config, out=config.out.parent / "torch-index", encoder_runtime="torch")
    reference = IndexVersion.load(build_index(torch_cfg).version_dir)
    assert reference.manifest.encoders.text is not None
    assert reference.manifest.encoders.text.runtime == "torch"
    ids = second.store.product_ids()
    np.testing.assert_allclose(
        second.store.vectors_for(ids), reference.store.vectors_for(ids), atol=1e-4
    )


def test_refresh_process_never_imports_torch(config: BuildConfig, synth_dir: Path) -> None:
    shutil.copytree(synth_dir, config.catalog)
    build_index(config)
    _change_titles(config.catalog, every=20)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from newarrivals.indexer.index.build import BuildConfig, build_index\n"
        "from newarrivals.indexer.encoders import ImageEncoderConfig, TextEncoderConfig\n"
        f"cfg = BuildConfig(catalog=Path({str(config.catalog)!r}), out=Path({str(config.out)!r}),"
        f" text=TextEncoderConfig(model={config.text.model!r}),"  # type: ignore[union-attr]
        f" image=ImageEncoderConfig(model={config.image.model!r}),"  # type: ignore[union-attr]
        " device='cpu', progress=False)\n"
        "s = build_index(cfg)\n"
        "encoded = s.stages['text'].encoded\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'encoded': encoded}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "encoded": result["encoded"]} and result["encoded"] > 0
