"""Fixtures the indexer tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from newarrivals.indexer.encoders import ImageEncoderConfig, TextEncoderConfig
from newarrivals.indexer.index.build import BuildConfig


@pytest.fixture()
def config(tiny_text_model_dir: Path, tiny_clip_dir: Path, tmp_path: Path) -> BuildConfig:
    """A build of ``tmp_path/catalog`` into ``tmp_path/index`` with the tiny test models."""
    return BuildConfig(
        catalog=tmp_path / "catalog",
        out=tmp_path / "index",
        text=TextEncoderConfig(model=str(tiny_text_model_dir)),
        image=ImageEncoderConfig(model=f"local-dir:{tiny_clip_dir}"),
        device="cpu",
        progress=False,
        chunk_size=50,
    )
