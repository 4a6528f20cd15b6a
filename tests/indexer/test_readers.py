"""Tests for the generic-schema readers and writers (JSON Lines, CSV, Parquet)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from newarrivals.indexer.catalog.readers import read_catalog, read_interactions, read_products
from newarrivals.indexer.catalog.schema import (
    Catalog,
    EventType,
    Interaction,
    Product,
    Reject,
    SourceRef,
    TextSource,
)
from newarrivals.indexer.catalog.writers import write_catalog, write_rejects
from newarrivals.indexer.errors import CatalogError, ConfigError

FORMATS = ["jsonl", "csv", "parquet"]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sample_catalog(image_dir: Path, outside_image: Path) -> Catalog:
    products = [
        Product(
            "00123",
            title='Red striped T-shirt, "classic"\nsecond line',
            description="Cotton; ünïcödé ✓",
            category=("Women", "Tops", "T-shirt"),
            brand="Acme",
            price=0.1 + 0.2,
            attributes={"colour": "red", "material": "cotton, 100%"},
            image=str(image_dir / "img" / "a.jpg"),
            launched_at=datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
            available=True,
            text_source=TextSource.OWN,
        ),
        # Slashes and ">" inside category parts force the JSON-list form on disk.
        Product(
            "sku-2",
            category=("Leggings/Tights",),
            price=0.0,
            image=str(outside_image),
            available=False,
            text_source=TextSource.SIBLING,
        ),
        Product("sku-3", category=("A > B", "C"), text_source=TextSource.NONE),
        Product("sku-4", title="plain", category=("Men", "Leggings/Tights")),
    ]
    moment = datetime(2024, 3, 2, 8, 0, tzinfo=UTC)
    interactions = [
        Interaction("u1", "00123", EventType.VIEW, moment),
        Interaction("u1", "00123", EventType.CLICK, moment + timedelta(seconds=1)),
        Interaction("u2", "sku-2", EventType.CART, moment + timedelta(microseconds=7)),
        Interaction("u2", "sku-2", EventType.PURCHASE, moment + timedelta(days=1)),
        Interaction("u2", "sku-2", EventType.PURCHASE, moment + timedelta(days=1)),
    ]
    return Catalog(products=products, interactions=interactions)


# --------------------------------------------------------------------------- round trips


def _column(path: Path, name: str) -> list[object]:
    """One column of a written file, read without the project's readers."""
    if path.suffix == ".parquet":
        return list(pq.read_table(path).column(name).to_pylist())
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return [row[name] for row in csv.DictReader(io.StringIO(text, newline=""))]
    return [json.loads(line)[name] for line in text.splitlines()]


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_then_read_round_trips_exactly(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    catalog = _sample_catalog(out, tmp_path / "elsewhere" / "b.jpg")

    written = write_catalog(catalog, out, fmt=fmt)
    back = read_catalog(out)

    assert written == {
        "products": out / f"products.{fmt}",
        "interactions": out / f"interactions.{fmt}",
    }
    assert back.products == catalog.products
    assert back.interactions == catalog.interactions
    assert back.rejects == []
    assert back.root == out
    # In CSV the first title's newline makes the first product two file lines long.
    assert back.provenance["sku-2"].line == {"jsonl": 2, "csv": 4, "parquet": 2}[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_images_inside_the_folder_are_written_relative(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "elsewhere" / "b.jpg"
    write_catalog(_sample_catalog(out, outside), out, fmt=fmt)

    images = _column(out / f"products.{fmt}", "image")
    assert "img/a.jpg" in images
    assert str(out / "img" / "a.jpg") not in images
    assert str(outside) in images

    # The folder is portable: moved elsewhere, images resolve against the new place.
    moved = tmp_path / "moved"
    out.rename(moved)
    assert read_catalog(moved).products[0].image == str(moved / "img" / "a.jpg")


def test_write_catalog_without_interactions_writes_only_products(tmp_path: Path) -> None:
    written = write_catalog(Catalog([Product("p1")]), tmp_path, fmt="csv")

    assert written == {"products": tmp_path / "products.csv"}
    assert not (tmp_path / "interactions.csv").exists()
    assert read_catalog(tmp_path).interactions == []


def test_write_catalog_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'xml'.*jsonl, csv, parquet"):
        write_catalog(Catalog([Product("p1")]), tmp_path, fmt="xml")


def test_leading_zero_ids_survive_csv(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "products.csv", ["product_id,price", "00123,1.5", "0000,2"])
    interactions = _write_lines(
        tmp_path / "interactions.csv",
        ["user_id,product_id,event,timestamp", "007,00123,view,2024-01-01"],
    )

    products = read_products(path).products
    items, _ = read_interactions(interactions)

    assert [p.product_id for p in products] == ["00123", "0000"]
    assert items[0].user_id == "007"
    assert items[0].product_id == "00123"


# --------------------------------------------------------------------------- field parsing


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("Women > Tops > T-shirt", ("Women", "Tops", "T-shirt")),
        ("Women>Tops", ("Women", "Tops")),
        ("Women/Tops/T-shirt", ("Women", "Tops", "T-shirt")),
        ("Women > Leggings/Tights", ("Women", "Leggings/Tights")),
        ('["Women", "Tops"]', ("Women", "Tops")),
        ("Single", ("Single",)),
        ("", ()),
    ],
)
def test_category_forms(tmp_path: Path, cell: str, expected: tuple[str, ...]) -> None:
    path = tmp_path / "products.jsonl"
    _write_lines(path, [json.dumps({"product_id": "p", "category": cell})])

    assert read_products(path).products[0].category == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC)),
        ("2024-03-01T10:00:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00:00Z", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T12:00:00+02:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        (1709287200, datetime(2024, 3, 1, 10, tzinfo=UTC)),
        (1709287200.5, datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("1709287200", datetime(2024, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_launched_at_forms(tmp_path: Path, value: object, expected: datetime) -> None:
    path = tmp_path / "products.jsonl"
    _write_lines(path, [json.dumps({"product_id": "p", "launched_at": value})])

    launched = read_products(path).products[0].launched_at

    assert launched == expected
    assert launched is not None and launched.utcoffset() == timedelta(0)


def test_offset_timestamps_are_converted_to_utc(tmp_path: Path) -> None:
    path = tmp_path / "products.jsonl"
    _write_lines(
        path, [json.dumps({"product_id": "p", "launched_at": "2024-03-01T02:00:00-05:00"})]
    )

    launched = read_products(path).products[0].launched_at

    assert launched == datetime(2024, 3, 1, 7, tzinfo=UTC)
    assert launched is not None and launched.tzinfo is UTC


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("No", False),
        ("", True),
    ],
)
def test_available_forms(tmp_path: Path, cell: str, expected: bool) -> None:
    path = _write_lines(tmp_path / "products.csv", ["product_id,available", f"p,{cell}"])

    assert read_products(path).products[0].available is expected


def test_attributes_extra_columns_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "products.jsonl"
    row = {
        "product_id": "p",
        "attributes": {"colour": "red", "size": 42, "organic": True, "gone": None},
        "material": "wool",
        "colour": "ignored: attributes already has colour",
        "stock": 3,
        "tags": ["a", "b"],
    }
    _write_lines(path, [json.dumps(row)])

    product = read_products(path).products[0]

    assert product.attributes == {
        "colour": "red",
        "size": "42",
        "organic": "true",
        "material": "wool",
        "stock": "3",
    }
    assert product.available is True
    assert product.text_source is TextSource.OWN
    assert product.price is None
    assert product.image is None


def test_csv_attributes_are_a_json_object(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "products.csv",
        ["product_id,attributes,material", 'p,"{""colour"": ""red""}",wool'],
    )

    assert read_products(path).products[0].attributes == {"colour": "red", "material": "wool"}


def test_image_paths_resolve_relative_and_file_uris(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    absolute = tmp_path / "pics" / "with space.jpg"
    rows = [
        {"product_id": "rel", "image": "img/a.jpg"},
        {"product_id": "dots", "image": "../pics/b.jpg"},
        {"product_id": "uri", "image": absolute.as_uri()},
        {"product_id": "abs", "image": str(absolute)},
        {"product_id": "none", "image": ""},
    ]
    path = _write_lines(data / "products.jsonl", [json.dumps(r) for r in rows])

    images = {p.product_id: p.image for p in read_products(path).products}

    # Missing files are kept: the build stage decides what is readable.
    assert images == {
        "rel": str(data / "img" / "a.jpg"),
        "dots": str(tmp_path / "pics" / "b.jpg"),
        "uri": str(absolute),
        "abs": str(absolute),
        "none": None,
    }


def test_remote_image_url_is_refused(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "products.jsonl",
        [json.dumps({"product_id": "p", "image": "https://example.com/a.jpg"})],
    )

    catalog = read_products(path)

    assert catalog.products == []
    assert "https URL" in catalog.rejects[0].reason


def test_interaction_event_aliases(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "interactions.csv",
        [
            "user_id,product_id,event,timestamp",
            "u,p,add_to_cart,2024-01-01",
            "u,p,Buy,2024-01-01",
            "u,p,order,2024-01-01",
            "u,p,VIEW,2024-01-01",
        ],
    )

    items, rejects = read_interactions(path)

    assert [i.event for i in items] == [
        EventType.CART,
        EventType.PURCHASE,
        EventType.PURCHASE,
        EventType.VIEW,
    ]
    assert rejects == []


# --------------------------------------------------------------------------- bad rows


def test_jsonl_bad_rows_are_quarantined_with_their_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"product_id": "good-1", "price": 3}),  # 1
        json.dumps({"title": "no id"}),  # 2
        json.dumps({"product_id": "good-1", "title": "again"}),  # 3
        json.dumps({"product_id": "p4", "price": "abc"}),  # 4
        "",  # 5: blank lines are skipped, but still counted
        json.dumps({"product_id": "p6", "price": -1}),  # 6
        json.dumps({"product_id": "p7", "launched_at": "yesterday"}),  # 7
        json.dumps({"product_id": "p8", "available": "maybe"}),  # 8
        '{"product_id": "p9", "title": ',  # 9
        json.dumps({"product_id": 123}),  # 10
        json.dumps({"product_id": "p11", "title": 5}),  # 11
        json.dumps(["not", "an", "object"]),  # 12
        json.dumps({"product_id": "p13", "text_source": "borrowed"}),  # 13
        json.dumps({"product_id": "p14", "launched_at": 1709287200000}),  # 14
        json.dumps({"product_id": "good-2", "category": "A > B"}),  # 15
    ]
    path = _write_lines(tmp_path / "products.jsonl", lines)

    catalog = read_products(path)

    assert [p.product_id for p in catalog.products] == ["good-1", "good-2"]
    assert catalog.provenance == {
        "good-1": SourceRef(str(path), 1),
        "good-2": SourceRef(str(path), 15),
    }
    by_line = {r.source.line: r for r in catalog.rejects}
    assert sorted(by_line) == [2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert all(r.kind == "product" and r.source.path == str(path) for r in catalog.rejects)
    assert "missing product_id" in by_line[2].reason
    assert "duplicate product_id 'good-1'" in by_line[3].reason
    assert f"{path}:1" in by_line[3].reason
    assert by_line[4].reason == "unparsable price 'abc' (expected a non-negative number)"
    assert "negative price -1" in by_line[6].reason
    assert "unparsable launched_at 'yesterday'" in by_line[7].reason
    assert "unparsable available 'maybe'" in by_line[8].reason
    assert "malformed JSON" in by_line[9].reason
    assert "product_id must be a string, got int 123" in by_line[10].reason
    assert "title must be a string, got int 5" in by_line[11].reason
    assert "expected a JSON object, got list" in by_line[12].reason
    assert "unknown text_source 'borrowed'" in by_line[13].reason
    assert "milliseconds" in by_line[14].reason
    # The raw text is the line itself, so the reject file can be fixed and replayed.
    assert by_line[9].raw == lines[8]
    assert by_line[4].raw == lines[3]


def test_csv_bad_rows_have_file_line_numbers(tmp_path: Path) -> None:
    lines = [
        "product_id,title,price,attributes",  # 1
        'good-1,"a title that spans',  # 2
        'two lines",1.0,',  # 3
        ",no id,2.0,",  # 4
        "p5,too,many,fields,here",  # 5
        "p6,bad attributes,1,not json",  # 6
        "p7,bad price,abc,",  # 7
        "good-2,fine,,",  # 8
    ]
    path = _write_lines(tmp_path / "products.csv", lines)

    catalog = read_products(path)

    assert [p.product_id for p in catalog.products] == ["good-1", "good-2"]
    assert catalog.products[0].title == "a title that spans\ntwo lines"
    assert catalog.provenance["good-2"] == SourceRef(str(path), 8)
    by_line = {r.source.line: r for r in catalog.rejects}
    assert sorted(by_line) == [4, 5, 6, 7]
    assert "empty product_id" in by_line[4].reason
    assert "expected 4 fields as in the header, got 5" in by_line[5].reason
    assert "attributes 'not json' is not a JSON object" in by_line[6].reason
    assert by_line[7].reason == "unparsable price 'abc' (expected a non-negative number)"
    assert by_line[7].raw == "p7,bad price,abc,"


def test_parquet_bad_rows_say_row(tmp_path: Path) -> None:
    path = tmp_path / "products.parquet"
    table = pa.table(
        {
            "product_id": ["a", "b", None, "d"],
            "price": ["1.5", "abc", "2", "3"],
            "launched_at": ["2024-01-01", None, None, "soon"],
        }
    )
    pq.write_table(table, path)

    catalog = read_products(path)

    assert [(p.product_id, p.price) for p in catalog.products] == [("a", 1.5)]
    by_line = {r.source.line: r for r in catalog.rejects}
    assert sorted(by_line) == [2, 3, 4]
    assert by_line[2].reason == ("unparsable price 'abc' (expected a non-negative number) (row 2)")
    assert "missing product_id" in by_line[3].reason and "(row 3)" in by_line[3].reason
    assert "unparsable launched_at 'soon'" in by_line[4].reason
    assert json.loads(by_line[2].raw) == {"product_id": "b", "price": "abc", "launched_at": None}


def test_parquet_numeric_id_column_is_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "products.parquet"
    pq.write_table(pa.table({"product_id": [1, 2]}), path)

    with pytest.raises(CatalogError, match=r"product_id has type int64; ids must be strings"):
        read_products(path)


def test_interaction_bad_rows(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "interactions.jsonl",
        [
            json.dumps({"user_id": "u", "product_id": "p", "event": "view", "timestamp": 0}),
            json.dumps({"user_id": "u", "product_id": "p", "event": "like", "timestamp": 0}),
            json.dumps({"user_id": "u", "product_id": "p", "event": "view"}),
            json.dumps({"product_id": "p", "event": "view", "timestamp": 0}),
            json.dumps({"user_id": "u", "product_id": "p", "event": "view", "timestamp": "x"}),
        ],
    )

    items, rejects = read_interactions(path)

    assert items == [Interaction("u", "p", EventType.VIEW, datetime(1970, 1, 1, tzinfo=UTC))]
    assert [r.source.line for r in rejects] == [2, 3, 4, 5]
    assert all(r.kind == "interaction" for r in rejects)
    assert "unknown event 'like'" in rejects[0].reason
    assert "missing timestamp" in rejects[1].reason
    assert "missing user_id" in rejects[2].reason
    assert "unparsable timestamp 'x'" in rejects[3].reason


def test_read_catalog_collects_rejects_of_both_files(tmp_path: Path) -> None:
    _write_lines(tmp_path / "products.csv", ["product_id,price", "p,1", "q,oops"])
    _write_lines(
        tmp_path / "interactions.csv",
        ["user_id,product_id,event,timestamp", "u,p,view,2024-01-01", "u,p,view,never"],
    )

    catalog = read_catalog(tmp_path)

    assert [p.product_id for p in catalog.products] == ["p"]
    assert len(catalog.interactions) == 1
    assert [(r.kind, r.source.line) for r in catalog.rejects] == [
        ("product", 3),
        ("interaction", 3),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_strict_raises_at_the_first_bad_row(tmp_path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        path = _write_lines(
            tmp_path / "products.jsonl",
            [json.dumps({"product_id": "a"}), json.dumps({"product_id": "b", "price": "abc"})],
        )
        line = 2
    else:
        path = _write_lines(tmp_path / "products.csv", ["product_id,price", "a,1", "b,abc"])
        line = 3

    with pytest.raises(CatalogError) as caught:
        read_products(path, strict=True)

    message = str(caught.value)
    assert f"{path}:{line}" in message
    assert "unparsable price 'abc'" in message
    assert "--strict" in message


def test_strict_raises_on_duplicate_id(tmp_path: Path) -> None:
    _write_lines(tmp_path / "products.csv", ["product_id", "a", "b", "a"])

    with pytest.raises(CatalogError, match=r"products\.csv:4: duplicate product_id 'a'"):
        read_catalog(tmp_path, strict=True)


def test_write_rejects_writes_json_lines(tmp_path: Path) -> None:
    rejects = [
        Reject(SourceRef("/x/products.csv", 3), "unparsable price 'abc'", "p,abc"),
        Reject(
            SourceRef("/x/interactions.csv", 2), "unknown event 'like'", "u,p,like", "interaction"
        ),
    ]
    out = tmp_path / "deep" / "rejects.jsonl"

    write_rejects(rejects, out)

    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records == [r.to_record() for r in rejects]


# --------------------------------------------------------------------------- files and folders


def test_unknown_suffix_names_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "products.xlsx"
    path.write_text("x", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"'\.xlsx'.*\.jsonl.*\.csv.*\.parquet"):
        read_products(path)
    with pytest.raises(ConfigError, match=r"'\.xlsx'"):
        read_interactions(path)


def test_read_catalog_of_an_empty_folder_lists_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as caught:
        read_catalog(tmp_path)

    message = str(caught.value)
    for name in ("products.jsonl", "products.csv", "products.parquet", "articles.csv"):
        assert name in message


def test_read_catalog_refuses_two_products_files(tmp_path: Path) -> None:
    _write_lines(tmp_path / "products.csv", ["product_id", "a"])
    _write_lines(tmp_path / "products.jsonl", [json.dumps({"product_id": "a"})])

    with pytest.raises(ConfigError, match=r"products\.jsonl and products\.csv"):
        read_catalog(tmp_path)


def test_read_catalog_of_a_single_file(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "items.csv", ["product_id,title", "a,Hat"])

    catalog = read_catalog(path)

    assert catalog.products == [Product("a", title="Hat")]
    assert catalog.root == tmp_path
    assert catalog.provenance["a"] == SourceRef(str(path), 2)


def test_missing_path_and_missing_column(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "nope")
    path = _write_lines(tmp_path / "products.csv", ["sku,title", "a,Hat"])
    with pytest.raises(CatalogError, match=r"no product_id column \(columns: sku, title\)"):
        read_products(path)


def test_json_array_file_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "products.json"
    path.write_text(json.dumps([{"product_id": "a"}], indent=1), encoding="utf-8")

    with pytest.raises(CatalogError, match="JSON Lines"):
        read_products(path)


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_lines(tmp_path / "products.jsonl", [json.dumps({"product_id": "a", "image": "a.jpg"})])
    monkeypatch.chdir(tmp_path)

    catalog = read_catalog(Path())

    assert catalog.root == tmp_path
    assert catalog.products[0].image == str(tmp_path / "a.jpg")
    assert catalog.provenance["a"].path == str(tmp_path / "products.jsonl")


@pytest.mark.slow
def test_reads_100k_rows_quickly(tmp_path: Path) -> None:
    import time

    rows = [
        json.dumps(
            {
                "product_id": f"{i:08d}",
                "title": f"Product {i}",
                "category": "A > B",
                "price": i / 10,
                "launched_at": "2024-01-01T00:00:00",
                "attributes": {"colour": "red"},
            }
        )
        for i in range(100_000)
    ]
    path = _write_lines(tmp_path / "products.jsonl", rows)

    started = time.perf_counter()
    catalog = read_products(path)
    elapsed = time.perf_counter() - started

    assert len(catalog.products) == 100_000
    assert elapsed < 10, f"reading 100k JSON lines took {elapsed:.1f}s"


def test_write_catalog_replaces_tables_of_an_earlier_write(tmp_path: Path) -> None:
    first = Catalog(
        products=[Product("a", title="old")],
        interactions=[Interaction("u", "a", EventType.VIEW, datetime(2024, 1, 1, tzinfo=UTC))],
    )
    write_catalog(first, tmp_path, fmt="csv")
    second = Catalog(products=[Product("b", title="new")])
    write_catalog(second, tmp_path, fmt="jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["products.jsonl"]
    again = read_catalog(tmp_path)
    assert [p.product_id for p in again.products] == ["b"] and again.interactions == []
