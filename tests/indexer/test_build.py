from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from newarrivals.indexer import CatalogError, IndexIntegrityError
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.writers import write_catalog
from newarrivals.indexer.encoders import (
    FusionConfig,
    TextEncoder,
)
from newarrivals.indexer.index.build import BuildConfig, build_index
from newarrivals.indexer.index.filters import SearchFilter
from newarrivals.indexer.index.version import LATEST_FILE, IndexVersion, latest_version
from newarrivals.indexer.retrieval.search import retrieve_for_user, similar_products
from newarrivals.indexer.retrieval.users import UserVectors


@pytest.fixture()
def catalog_copy(synth_dir: Path, config: BuildConfig) -> Path:
    shutil.copytree(synth_dir, config.catalog)
    return config.catalog


def test_build_publishes_a_consistent_version(config: BuildConfig, catalog_copy: Path) -> None:
    summary = build_index(config)
    catalog = read_catalog(catalog_copy)
    assert summary.counts.products_read == len(catalog.products)
    assert summary.counts.indexed + summary.counts.content_rejects == summary.counts.products_read
    assert (
        summary.counts.with_text > 0
        and summary.counts.with_image > 0
        and summary.counts.with_both > 0
    )
    # Text-only and photo-only products are both indexed (the synthetic catalogue has both).
    assert (
        summary.counts.with_text > summary.counts.with_both
        and summary.counts.with_image > summary.counts.with_both
    )
    assert (config.out / LATEST_FILE).read_text().strip() == summary.version_dir.name
    version = IndexVersion.load(config.out)
    assert version.path == summary.version_dir
    assert len(version.store) == summary.counts.indexed
    assert version.dim == 32 + 24  # concat of the tiny text and image towers
    m = version.manifest
    assert m.encoders.image is not None and m.encoders.image.trained is True
    assert m.counts.indexed == summary.counts.indexed
    assert "numpy" in m.libraries and m.content_hashes
    assert not list(config.out.glob(".tmp-*"))


def test_rebuild_uses_cache_and_reencodes_only_changes(
    config: BuildConfig, catalog_copy: Path
) -> None:
    first = build_index(config)
    assert first.stages["text"].encoded > 0
    again = build_index(config)
    assert again.stages["text"].encoded == 0 and again.stages["image"].encoded == 0
    assert again.stages["text"].cached == first.stages["text"].items

    catalog = read_catalog(catalog_copy)
    changed = [p for p in catalog.products if p.has_text][:2]
    edits = {p.product_id: replace(p, title=p.title + " limited edition") for p in changed}
    catalog.products = [edits.get(p.product_id, p) for p in catalog.products]
    write_catalog(catalog, catalog_copy)
    third = build_index(config)
    assert third.stages["text"].encoded == 2
    assert third.stages["image"].encoded == 0
    assert third.version_dir != again.version_dir


def test_interrupted_build_resumes_from_cached_chunks(
    config: BuildConfig, catalog_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = TextEncoder.encode

    def flaky(self: TextEncoder, texts: list[str], *, progress: bool = False) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(self, texts, progress=progress)

    monkeypatch.setattr(TextEncoder, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_index(config)
    assert not list(config.out.glob(".tmp-*")) and not list(config.out.glob("v*"))
    monkeypatch.setattr(TextEncoder, "encode", real)
    resumed = build_index(config)
    # Two chunks of 50 were cached before the crash.
    assert resumed.stages["text"].cached == 100
    assert resumed.stages["text"].encoded == resumed.stages["text"].items - 100


def test_bad_rows_are_quarantined_and_the_rest_indexed(
    config: BuildConfig, catalog_copy: Path, tmp_path: Path
) -> None:
    catalog = read_catalog(catalog_copy)
    with_image = [p for p in catalog.products if p.has_image and p.has_text]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    text_keeps = replace(with_image[0], image=str(broken))
    photo_only = replace(with_image[1], title="", description="", image=str(broken))
    catalog.products = [
        {text_keeps.product_id: text_keeps, photo_only.product_id: photo_only}.get(p.product_id, p)
        for p in catalog.products
    ]
    write_catalog(catalog, catalog_copy)
    products_file = catalog_copy / "products.jsonl"
    with products_file.open("a") as f:
        f.write(json.dumps({"product_id": "bad-price", "title": "x", "price": "abc"}) + "\n")
        f.write(json.dumps({"title": "no id"}) + "\n")
    n_lines = len(products_file.read_text().splitlines())

    summary = build_index(config)
    assert summary.counts.rejected_rows == 2
    assert summary.counts.image_rejects == 2
    assert summary.counts.content_rejects >= 1
    rejects = [json.loads(line) for line in summary.rejects_file.read_text().splitlines()]
    price = next(r for r in rejects if "abc" in r["reason"])
    assert price["line"] == n_lines - 1 and price["path"].endswith("products.jsonl")
    image_rows = [r for r in rejects if r["kind"] == "image"]
    assert {text_keeps.product_id, photo_only.product_id} <= {
        json.loads(r["raw"])["product_id"] for r in image_rows
    }
    version = IndexVersion.load(config.out)
    assert text_keeps.product_id in version.store  # encoded from its text
    assert photo_only.product_id not in version.store  # nothing left to encode
    assert "bad-price" not in version.store

    with pytest.raises(CatalogError, match=r"products.jsonl:\d+"):
        build_index(replace(config, strict=True))


def test_tampered_version_is_refused(config: BuildConfig, catalog_copy: Path) -> None:
    summary = build_index(config)
    target = summary.version_dir / "rejects.jsonl"
    target.write_text(target.read_text() + "\n")
    with pytest.raises(IndexIntegrityError, match=r"rejects\.jsonl"):
        IndexVersion.load(summary.version_dir)
    assert IndexVersion.load(summary.version_dir, verify=False).version == summary.version_dir.name


def test_empty_index_root_explains(tmp_path: Path) -> None:
    with pytest.raises(IndexIntegrityError, match="build-index"):
        latest_version(tmp_path)


def test_text_only_and_image_only_builds(config: BuildConfig, catalog_copy: Path) -> None:
    text_only = build_index(replace(config, image=None, out=config.out / "t"))
    assert text_only.counts.with_image == 0 and IndexVersion.load(config.out / "t").dim == 32
    image_only = build_index(replace(config, text=None, out=config.out / "i"))
    assert image_only.counts.with_text == 0 and IndexVersion.load(config.out / "i").dim == 24


def _recall_at(ranked: list[str], truth: set[str], k: int) -> float:
    return len(set(ranked[:k]) & truth) / len(truth)


def test_minilm_retrieval_beats_random_on_new_arrivals(tmp_path: Path) -> None:
    """Known tastes: users' pre-cutoff history must find the new arrivals they later touch."""
    from newarrivals.indexer.catalog.synth import (
        SynthConfig,
        generate,
        load_ground_truth,
        write_synthetic,
    )

    synth_dir = tmp_path / "synth"
    write_synthetic(
        generate(SynthConfig(n_products=800, n_users=80, seed=11)), synth_dir, progress=False
    )
    truth = load_ground_truth(synth_dir / "ground_truth.json")
    summary = build_index(
        BuildConfig(
            catalog=synth_dir,
            out=tmp_path / "idx",
            image=None,
            device="cpu",
            progress=False,
            fusion=FusionConfig(),
        )
    )
    version = IndexVersion.load(summary.version_dir)
    catalog = read_catalog(synth_dir)
    new = set(truth.new_arrival_ids) & set(version.store.product_ids())
    users = UserVectors(version.store)
    users.update_many(e for e in catalog.interactions if e.timestamp < truth.cutoff)
    future: dict[str, set[str]] = {}
    for e in catalog.interactions:
        if e.timestamp >= truth.cutoff and e.product_id in new:
            future.setdefault(e.user_id, set()).add(e.product_id)
    flt = SearchFilter(launched_after=truth.cutoff)
    rng = np.random.default_rng(0)
    ours, rand = [], []
    for user, items in future.items():
        if users.vector(user) is None:
            continue
        got = [c.product_id for c in retrieve_for_user(version.store, users, user, 10, flt)]
        assert set(got) <= new
        ours.append(_recall_at(got, items, 10))
        rand.append(_recall_at(list(rng.permutation(sorted(new))), items, 10))
    assert len(new) >= 80 and len(ours) >= 40
    assert np.mean(ours) > 2 * np.mean(rand), (np.mean(ours), np.mean(rand))
    some = next(iter(new))
    sims = similar_products(version.store, some, 5)
    assert some not in [c.product_id for c in sims] and len(sims) == 5
