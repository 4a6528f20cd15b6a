"""The index manifest: one typed reader and writer of manifest.json, checked on load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from newarrivals.indexer.errors import IndexIntegrityError
from newarrivals.indexer.index.manifest import FORMAT_VERSION, IndexManifest


def _manifest_json() -> dict[str, Any]:
    counts = {"products_read": 10, "rejected_rows": 1, "image_rejects": 0, "content_rejects": 1}
    counts |= {"indexed": 8, "with_text": 7, "with_image": 6, "with_both": 5, "interactions": 3}
    return {
        "format_version": FORMAT_VERSION,
        "version": "v20260101T000000Z-00000000",
        "built_at": "2026-01-01T00:00:00+00:00",
        "dim": 56,
        "counts": counts,
        "encoders": {
            "text": {"id": "text-id", "model": "hash", "dim": 32, "runtime": "onnx"},
            "image": {
                "id": "image-id",
                "model": "tiny",
                "pretrained": None,
                "trained": True,
                "dim": 24,
                "runtime": "torch",
            },
        },
        "fusion": {"mode": "concat"},
        "ann": {"factory": "Flat"},
        "device": "cpu",
        "config": {"catalog": "data/catalog", "cache_dir": None, "fusion": {"mode": "concat"}},
        "libraries": {"numpy": "2.0"},
        "stats": {"text": {"items": 7, "seconds": 1.5}, "image": {"items": 6, "seconds": 0.5}},
        "content_hashes": {"index.faiss": "ab"},
    }


def _manifest() -> IndexManifest:
    return IndexManifest.from_dict(_manifest_json())


def test_round_trips_through_json(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest.write(tmp_path / "manifest.json")
    again = IndexManifest.read(tmp_path / "manifest.json")
    assert again == manifest
    assert again.catalog == "data/catalog" and again.cache_dir is None
    assert again.stage_seconds == pytest.approx(2.0)
    assert again.to_dict() == _manifest_json()
    assert again.encoders.image is not None and again.encoders.image.trained


def test_counts_that_contradict_each_other_name_both_numbers() -> None:
    data = _manifest_json()
    data["counts"]["with_both"] = 9
    with pytest.raises(IndexIntegrityError, match=r"9 products with both .* only 7 with_text"):
        IndexManifest.from_dict(data)
    with pytest.raises(IndexIntegrityError, match="12 indexed products but only 10 read"):
        replace(_manifest().counts, indexed=12)


def test_wrong_format_or_missing_key_is_refused() -> None:
    data = _manifest_json()
    with pytest.raises(IndexIntegrityError, match="index format 99, this code reads"):
        IndexManifest.from_dict({**data, "format_version": 99})
    del data["counts"]["indexed"]
    with pytest.raises(IndexIntegrityError, match=r"no counts\.'indexed'"):
        IndexManifest.from_dict(data)
