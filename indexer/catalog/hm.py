"""Read the Kaggle "H&M Personalized Fashion Recommendations" layout as a generic catalogue.

The folder holds ``articles.csv`` (product text), ``transactions_train.csv`` (purchases) and
``images/NNN/ARTICLE.jpg`` (NNN = the id's first three digits). Every id is read as text: an
``article_id`` is a 10-digit string whose first 7 digits are the ``product_code`` (which the
CSV stores without its leading zero) and whose last 3 are the colour variant.

Products are every article that was bought plus every article with a row in
``articles.csv``, sorted by id. Their text comes from:

* their own row (``text_source=own``): title = ``prod_name``, description = ``detail_desc``,
  category = (``index_group_name`` or ``index_name``, ``product_group_name``,
  ``product_type_name``), attributes from the colour, pattern, department, section, garment
  group and index columns;
* otherwise a sibling's row, the same ``product_code`` in another colour
  (``text_source=sibling``; the sibling with the smallest id is used): the same fields
  except the variant-specific attributes ``colour``, ``colour_value``, ``colour_master`` and
  ``pattern``, which describe the sibling and not this article (the pattern differs between
  variants of one product code about a third of the time);
* otherwise nothing (``text_source=none``): an image-only product.

``price`` is the median price paid (H&M's normalised units), ``launched_at`` the day of the
first sale (midnight UTC); articles never bought have neither. ``image`` is set when the
photo file exists. Every transaction row becomes a ``purchase`` interaction at midnight UTC
of its day, duplicates included (a quantity above one is repeated rows).

Example:
    >>> from pathlib import Path
    >>> catalog = read_hm(Path("/data/hm"), max_articles=100)  # doctest: +SKIP
    >>> catalog.products[0].text_source  # doctest: +SKIP
    <TextSource.OWN: 'own'>
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from newarrivals.indexer.catalog.cells import parse_price, parse_timestamp
from newarrivals.indexer.catalog.rows import Quarantine, RowError, absolute_path, iter_csv
from newarrivals.indexer.catalog.schema import (
    Catalog,
    EventType,
    Interaction,
    Product,
    Reject,
    SourceRef,
    TextSource,
)
from newarrivals.indexer.errors import CatalogError, ConfigError

__all__ = ["ARTICLES_FILE", "IMAGES_DIR", "TRANSACTIONS_FILE", "is_hm_layout", "read_hm"]

ARTICLES_FILE = "articles.csv"
TRANSACTIONS_FILE = "transactions_train.csv"
IMAGES_DIR = "images"

_ARTICLE_ID_DIGITS = 10
_PRODUCT_CODE_DIGITS = 7
_IMAGE_SHARD_DIGITS = 3

# H&M column -> attribute key; short keys read better in the text the encoders see.
_VARIANT_ATTRIBUTES: Mapping[str, str] = {
    "colour_group_name": "colour",
    "perceived_colour_value_name": "colour_value",
    "perceived_colour_master_name": "colour_master",
    "graphical_appearance_name": "pattern",
}
_SHARED_ATTRIBUTES: Mapping[str, str] = {
    "department_name": "department",
    "section_name": "section",
    "garment_group_name": "garment_group",
    "index_name": "index",
}


def is_hm_layout(root: Path) -> bool:
    """Whether ``root`` is a folder in the Kaggle H&M layout (articles + transactions)."""
    return (root / ARTICLES_FILE).is_file() and (root / TRANSACTIONS_FILE).is_file()


@dataclass(frozen=True, slots=True)
class _Article:
    """The text of one ``articles.csv`` row, split into what siblings may share."""

    article_id: str
    product_code: str
    title: str
    description: str
    category: tuple[str, ...]
    shared: dict[str, str]
    variant: dict[str, str]


@dataclass(slots=True)
class _Sales:
    """What the transactions say about one article."""

    first_sale: datetime
    first_line: int
    prices: list[float] = field(default_factory=list)


def read_hm(root: Path, *, strict: bool = False, max_articles: int | None = None) -> Catalog:
    """Read a folder in the Kaggle H&M layout.

    Args:
        root: The folder with ``articles.csv``, ``transactions_train.csv`` and ``images/``.
        strict: Raise on the first bad row instead of quarantining it.
        max_articles: Keep only the first ``max_articles`` bought articles by id, and their
            transactions (for quick runs); ``None`` keeps everything, including articles
            that were never bought.

    Returns:
        The catalogue: products sorted by id, purchases in file order, rejects, and the
        provenance of every product (its ``articles.csv`` row, else its first sale).

    Raises:
        CatalogError: A file is missing or lacks a required column, or (strict) a row is bad.
        ConfigError: ``max_articles`` is not a positive integer.
    """
    if max_articles is not None and max_articles < 1:
        raise ConfigError(f"max_articles must be a positive integer or None, got {max_articles!r}.")
    root = absolute_path(root)
    articles_path = root / ARTICLES_FILE
    transactions_path = root / TRANSACTIONS_FILE
    for required in (articles_path, transactions_path):
        if not required.is_file():
            raise CatalogError(
                f"{required} is missing; an H&M folder needs {ARTICLES_FILE} and "
                f"{TRANSACTIONS_FILE} (images/ is optional)."
            )

    purchases, sales, purchase_rejects = _read_transactions(transactions_path, strict=strict)
    articles, article_lines, article_rejects = _read_articles(articles_path, strict=strict)

    if max_articles is None:
        kept = sorted(sales.keys() | articles.keys())
    else:
        kept = sorted(sales)[:max_articles]
        kept_set = set(kept)
        purchases = [item for item in purchases if item.product_id in kept_set]

    # The sibling with the smallest id speaks for its product code, so the choice does not
    # depend on row order.
    by_code: dict[str, _Article] = {}
    for article_id in sorted(articles):
        by_code.setdefault(articles[article_id].product_code, articles[article_id])

    products: list[Product] = []
    provenance: dict[str, SourceRef] = {}
    for article_id in kept:
        own = articles.get(article_id)
        sold = sales.get(article_id)
        if own is not None:
            article: _Article | None = own
            text_source = TextSource.OWN
            attributes = own.shared | own.variant
            provenance[article_id] = SourceRef(str(articles_path), article_lines[article_id])
        else:
            article = by_code.get(article_id[:_PRODUCT_CODE_DIGITS])
            text_source = TextSource.NONE if article is None else TextSource.SIBLING
            attributes = {} if article is None else dict(article.shared)
            if sold is not None:  # always: without a row of its own, only a sale lists it
                provenance[article_id] = SourceRef(str(transactions_path), sold.first_line)
        products.append(
            Product(
                product_id=article_id,
                title=article.title if article else "",
                description=article.description if article else "",
                category=article.category if article else (),
                price=statistics.median(sold.prices) if sold and sold.prices else None,
                attributes=attributes,
                image=_image_path(root, article_id),
                launched_at=sold.first_sale if sold else None,
                available=True,
                text_source=text_source,
            )
        )
    return Catalog(
        products=products,
        interactions=purchases,
        rejects=article_rejects + purchase_rejects,
        provenance=provenance,
        root=root,
    )


def _image_path(root: Path, article_id: str) -> str | None:
    path = root / IMAGES_DIR / article_id[:_IMAGE_SHARD_DIGITS] / f"{article_id}.jpg"
    return os.path.normpath(path) if path.is_file() else None


def _article_id(value: object, name: str = "article_id") -> str:
    """A 10-digit article id; shorter digit strings lost their leading zeros and get them back."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise RowError(f"missing {name} (every row needs one)")
    if not text.isdigit() or len(text) > _ARTICLE_ID_DIGITS:
        raise RowError(
            f"{name} {value!r} is not an H&M article id (expected up to "
            f"{_ARTICLE_ID_DIGITS} digits, e.g. '0111565001')"
        )
    return text.zfill(_ARTICLE_ID_DIGITS)


def _cell(values: Mapping[str, object], name: str) -> str:
    value = values.get(name)
    return value.strip() if isinstance(value, str) else ""


def _attributes(values: Mapping[str, object], columns: Mapping[str, str]) -> dict[str, str]:
    return {key: value for column, key in columns.items() if (value := _cell(values, column))}


def _parse_article(values: Mapping[str, object]) -> _Article:
    article_id = _article_id(values.get("article_id"))
    code = _cell(values, "product_code")
    if code and not code.isdigit():
        raise RowError(f"product_code {code!r} is not numeric (expected e.g. '111565')")
    top = _cell(values, "index_group_name") or _cell(values, "index_name")
    category = (top, _cell(values, "product_group_name"), _cell(values, "product_type_name"))
    return _Article(
        article_id=article_id,
        # The CSV drops the code's leading zero; the id's first 7 digits are the same code.
        product_code=code.zfill(_PRODUCT_CODE_DIGITS)
        if code
        else article_id[:_PRODUCT_CODE_DIGITS],
        title=_cell(values, "prod_name"),
        description=_cell(values, "detail_desc"),
        category=tuple(part for part in category if part),
        shared=_attributes(values, _SHARED_ATTRIBUTES),
        variant=_attributes(values, _VARIANT_ATTRIBUTES),
    )


def _read_articles(
    path: Path, *, strict: bool
) -> tuple[dict[str, _Article], dict[str, int], list[Reject]]:
    quarantine = Quarantine(kind="product", strict=strict, row_label="")
    articles: dict[str, _Article] = {}
    lines: dict[str, int] = {}
    rows = iter_csv(path, required=("article_id",))
    for source, article in quarantine.keep_first(
        path, rows, _parse_article, key=lambda article: article.article_id, name="article_id"
    ):
        articles[article.article_id] = article
        lines[article.article_id] = source.line
    return articles, lines, quarantine.rejects


def _read_transactions(
    path: Path, *, strict: bool
) -> tuple[list[Interaction], dict[str, _Sales], list[Reject]]:
    quarantine = Quarantine(kind="interaction", strict=strict, row_label="")
    # A few hundred distinct days cover millions of rows: parse each day once.
    days: dict[str, datetime] = {}

    def parse(values: Mapping[str, object]) -> tuple[Interaction, float | None]:
        customer = _cell(values, "customer_id")
        if not customer:
            raise RowError("missing customer_id (every transaction needs one)")
        article_id = _article_id(values.get("article_id"))
        day = _cell(values, "t_dat")
        moment = days.get(day)
        if moment is None:
            if not day:
                raise RowError("missing t_dat (every transaction needs its day)")
            moment = days[day] = parse_timestamp(day, "t_dat")
        price = parse_price(values.get("price"))
        return Interaction(customer, article_id, EventType.PURCHASE, moment), price

    purchases: list[Interaction] = []
    sales: dict[str, _Sales] = {}
    rows = iter_csv(path, required=("t_dat", "customer_id", "article_id"))
    for source, _, (purchase, price) in quarantine.parse(path, rows, parse):
        purchases.append(purchase)
        sold = sales.get(purchase.product_id)
        if sold is None:
            sold = sales[purchase.product_id] = _Sales(purchase.timestamp, source.line)
        elif purchase.timestamp < sold.first_sale:
            sold.first_sale, sold.first_line = purchase.timestamp, source.line
        if price is not None:
            sold.prices.append(price)
    return purchases, sales, quarantine.rejects
