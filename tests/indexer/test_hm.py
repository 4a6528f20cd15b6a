"""Tests for the Kaggle H&M layout adapter, on a tiny fake folder and on the shared sample."""

from __future__ import annotations

import csv
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from newarrivals.indexer.catalog.hm import read_hm
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import EventType, SourceRef, TextSource
from newarrivals.indexer.errors import CatalogError, ConfigError

# The real sample sits next to the repository (../shared/data/hm), never inside it.
REAL_HM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hm"

ARTICLE_COLUMNS = [
    "article_id",
    "product_code",
    "prod_name",
    "product_type_name",
    "product_group_name",
    "graphical_appearance_name",
    "colour_group_name",
    "perceived_colour_value_name",
    "perceived_colour_master_name",
    "department_name",
    "index_name",
    "index_group_name",
    "section_name",
    "garment_group_name",
    "detail_desc",
]


def _article(article_id: str, name: str, colour: str, pattern: str = "Solid") -> list[str]:
    return [
        article_id,
        article_id[:7].lstrip("0"),  # the real file drops the code's leading zero
        name,
        "Leggings/Tights",
        "Garment Lower body",
        pattern,
        colour,
        "Dark",
        colour,
        "Jersey Basic",
        "Ladieswear",
        "Ladieswear",
        "Womens Everyday Basics",
        "Jersey Basic",
        f"{name}, in stretch jersey.",
    ]


@pytest.fixture
def hm_root(tmp_path: Path) -> Path:
    """A tiny H&M-layout folder.

    * 0100001001: own row (Black, Solid), bought three times (one sale is a duplicate row).
    * 0100001003: own row (Blue, Stripe), never bought; listed before 001 in the file.
    * 0100001002: no row, bought: borrows 001's text (the smallest sibling id), not its colour.
    * 0200002001: no row and no sibling, bought: image only.
    * 0300003001: own row, never bought, no photo.
    """
    root = tmp_path / "hm"
    root.mkdir()
    with (root / "articles.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ARTICLE_COLUMNS)
        writer.writerow(_article("0100001003", "Pirate leggings (blue)", "Blue", "Stripe"))
        writer.writerow(_article("0100001001", "Pirate leggings", "Black"))
        writer.writerow(_article("0300003001", "Sun hat", "Yellow"))
    transactions = [
        ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"],
        ["2019-01-05", "c1", "0100001001", "0.1", "2"],  # line 2
        ["2019-01-02", "c2", "0100001001", "0.3", "2"],  # line 3: earlier, out of order
        ["2019-01-06", "c2", "0100001002", "0.05", "1"],  # line 4
        ["2019-01-06", "c2", "0100001002", "0.05", "1"],  # line 5: quantity 2
        ["2019-01-07", "c3", "0200002001", "0.02", "2"],  # line 6
        ["2019-01-08", "c3", "not-an-id", "0.02", "2"],  # line 7: bad
        ["2019-01-09", "c1", "0100001001", "0.2", "2"],  # line 8
        ["someday", "c3", "0200002001", "0.02", "2"],  # line 9: bad
    ]
    with (root / "transactions_train.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(transactions)
    for article_id in ("0100001001", "0100001002", "0100001003", "0200002001"):
        folder = root / "images" / article_id[:3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 6), (200, 10, 10)).save(folder / f"{article_id}.jpg")
    return root


def test_products_cover_bought_and_listed_articles(hm_root: Path) -> None:
    catalog = read_hm(hm_root)

    assert catalog.product_ids() == [
        "0100001001",
        "0100001002",
        "0100001003",
        "0200002001",
        "0300003001",
    ]
    assert catalog.root == hm_root


def test_own_text(hm_root: Path) -> None:
    product = {p.product_id: p for p in read_hm(hm_root).products}["0100001001"]

    assert product.text_source is TextSource.OWN
    assert product.title == "Pirate leggings"
    assert product.description == "Pirate leggings, in stretch jersey."
    assert product.category == ("Ladieswear", "Garment Lower body", "Leggings/Tights")
    assert product.attributes == {
        "colour": "Black",
        "colour_value": "Dark",
        "colour_master": "Black",
        "pattern": "Solid",
        "department": "Jersey Basic",
        "section": "Womens Everyday Basics",
        "garment_group": "Jersey Basic",
        "index": "Ladieswear",
    }


def test_sibling_text_without_the_siblings_colour(hm_root: Path) -> None:
    product = {p.product_id: p for p in read_hm(hm_root).products}["0100001002"]

    assert product.text_source is TextSource.SIBLING
    # 001 and 003 are both siblings; the smallest id wins whatever the row order.
    assert product.title == "Pirate leggings"
    assert product.category == ("Ladieswear", "Garment Lower body", "Leggings/Tights")
    assert product.attributes == {
        "department": "Jersey Basic",
        "section": "Womens Everyday Basics",
        "garment_group": "Jersey Basic",
        "index": "Ladieswear",
    }
    assert not {"colour", "colour_value", "colour_master", "pattern"} & product.attributes.keys()


def test_no_text_when_no_row_and_no_sibling(hm_root: Path) -> None:
    product = {p.product_id: p for p in read_hm(hm_root).products}["0200002001"]

    assert product.text_source is TextSource.NONE
    assert not product.has_text
    assert product.category == ()
    assert product.attributes == {}
    assert product.has_image


def test_images_found_when_the_file_exists(hm_root: Path) -> None:
    images = {p.product_id: p.image for p in read_hm(hm_root).products}

    assert images["0100001001"] == str(hm_root / "images" / "010" / "0100001001.jpg")
    assert images["0200002001"] == str(hm_root / "images" / "020" / "0200002001.jpg")
    assert images["0300003001"] is None


def test_price_and_launch_come_from_sales(hm_root: Path) -> None:
    products = {p.product_id: p for p in read_hm(hm_root).products}

    assert products["0100001001"].price == pytest.approx(0.2)  # median of 0.1, 0.3, 0.2
    assert products["0100001001"].launched_at == datetime(2019, 1, 2, tzinfo=UTC)
    assert products["0100001002"].price == pytest.approx(0.05)
    assert products["0300003001"].price is None
    assert products["0300003001"].launched_at is None
    assert all(p.available for p in products.values())


def test_interactions_keep_duplicates_and_quarantine_bad_rows(hm_root: Path) -> None:
    catalog = read_hm(hm_root)

    assert len(catalog.interactions) == 6
    assert all(i.event is EventType.PURCHASE for i in catalog.interactions)
    first = catalog.interactions[0]
    assert (first.user_id, first.product_id) == ("c1", "0100001001")
    assert first.timestamp == datetime(2019, 1, 5, tzinfo=UTC)
    assert (
        Counter((i.user_id, i.product_id) for i in catalog.interactions)[("c2", "0100001002")] == 2
    )
    transactions = str(hm_root / "transactions_train.csv")
    assert [(r.kind, r.source) for r in catalog.rejects] == [
        ("interaction", SourceRef(transactions, 7)),
        ("interaction", SourceRef(transactions, 9)),
    ]
    assert "'not-an-id' is not an H&M article id" in catalog.rejects[0].reason
    assert "unparsable t_dat 'someday'" in catalog.rejects[1].reason
    assert catalog.rejects[0].raw == "2019-01-08,c3,not-an-id,0.02,2"


def test_provenance_points_at_the_row_or_the_first_sale(hm_root: Path) -> None:
    provenance = read_hm(hm_root).provenance

    assert provenance["0100001001"] == SourceRef(str(hm_root / "articles.csv"), 3)
    assert provenance["0300003001"] == SourceRef(str(hm_root / "articles.csv"), 4)
    assert provenance["0100001002"] == SourceRef(str(hm_root / "transactions_train.csv"), 4)


def test_max_articles_keeps_the_first_bought_articles(hm_root: Path) -> None:
    catalog = read_hm(hm_root, max_articles=2)

    assert catalog.product_ids() == ["0100001001", "0100001002"]
    assert {i.product_id for i in catalog.interactions} == {"0100001001", "0100001002"}
    assert len(catalog.interactions) == 5
    with pytest.raises(ConfigError, match="max_articles must be a positive integer"):
        read_hm(hm_root, max_articles=0)


def test_strict_raises_on_the_first_bad_transaction(hm_root: Path) -> None:
    with pytest.raises(CatalogError, match=r"transactions_train\.csv:7: article_id 'not-an-id'"):
        read_hm(hm_root, strict=True)


def test_duplicate_article_rows_keep_the_first(hm_root: Path) -> None:
    with (hm_root / "articles.csv").open("a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(_article("0100001001", "Impostor", "Red"))

    catalog = read_hm(hm_root)

    product = {p.product_id: p for p in catalog.products}["0100001001"]
    assert product.title == "Pirate leggings"
    assert [r.source.line for r in catalog.rejects if r.kind == "product"] == [5]
    assert "duplicate article_id '0100001001'" in catalog.rejects[0].reason


def test_missing_file_is_named(hm_root: Path) -> None:
    (hm_root / "transactions_train.csv").unlink()

    with pytest.raises(CatalogError, match=r"transactions_train\.csv is missing"):
        read_hm(hm_root)


def test_read_catalog_detects_the_layout(hm_root: Path) -> None:
    catalog = read_catalog(hm_root)

    assert len(catalog.products) == 5
    assert catalog.root == hm_root


@pytest.mark.skipif(not (REAL_HM / "articles.csv").is_file(), reason=f"no H&M sample at {REAL_HM}")
def test_real_sample_loads_with_its_documented_coverage() -> None:
    started = time.perf_counter()
    catalog = read_catalog(REAL_HM)
    elapsed = time.perf_counter() - started

    bought = {i.product_id for i in catalog.interactions}
    by_id = {p.product_id: p for p in catalog.products}
    sources = Counter(by_id[article_id].text_source for article_id in bought)
    assert catalog.rejects == []
    assert len(catalog.interactions) == 31_662
    assert len(bought) == 17_033
    assert bought <= by_id.keys()
    assert sources[TextSource.OWN] == 4_116
    assert sources[TextSource.OWN] + sources[TextSource.SIBLING] == 7_127
    assert all(by_id[article_id].has_image for article_id in bought)
    assert all(len(article_id) == 10 for article_id in by_id)
    assert elapsed < 30, f"loading the H&M sample took {elapsed:.1f}s"


def test_hm_layout_indexes_text_only_image_only_and_both(
    hm_root: Path, tiny_text_model_dir: Path, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    from newarrivals.indexer.encoders import ImageEncoderConfig, TextEncoderConfig
    from newarrivals.indexer.index.build import BuildConfig, build_index
    from newarrivals.indexer.index.version import IndexVersion

    summary = build_index(
        BuildConfig(
            catalog=hm_root,
            out=tmp_path / "index",
            text=TextEncoderConfig(model=str(tiny_text_model_dir)),
            image=ImageEncoderConfig(model=f"local-dir:{tiny_clip_dir}"),
            device="cpu",
            progress=False,
        )
    )
    store = IndexVersion.load(summary.version_dir).store
    for product_id in ("0100001001", "0100001002", "0200002001", "0300003001"):
        assert product_id in store
    assert summary.counts.with_both >= 2  # own text + photo, sibling text + photo
    assert summary.counts.with_image - summary.counts.with_both >= 1  # 0200002001: photo only
    assert summary.counts.with_text - summary.counts.with_both >= 1  # 0300003001: text only


@pytest.mark.slow
@pytest.mark.skipif(not REAL_HM.is_dir(), reason="the shared H&M sample is not next to the repo")
def test_real_hm_sample_indexes(tmp_path: Path) -> None:
    """Full-size: bundled MiniLM + the built-in tower over 24,717 products (minutes on 2 cores)."""
    from newarrivals.indexer.index.build import BuildConfig, build_index

    summary = build_index(
        BuildConfig(catalog=REAL_HM, out=tmp_path / "index", device="cpu", progress=False)
    )
    assert summary.counts.indexed == summary.counts.products_read
    assert summary.counts.with_image == 17_033
    assert summary.counts.with_image - summary.counts.with_both == 9_906  # photo only
    assert (
        summary.counts.with_text - summary.counts.with_both > 0
    )  # listed, never bought: text only
