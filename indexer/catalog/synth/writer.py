"""Write a synthetic catalogue to a folder: photos, catalogue files and the ground truth."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from newarrivals.indexer.catalog.schema import Catalog
from newarrivals.indexer.catalog.synth.config import STREAM_IMAGES, random_stream
from newarrivals.indexer.catalog.synth.photos import draw_product_image
from newarrivals.indexer.catalog.synth.truth import GROUND_TRUTH_FILE, SyntheticCatalog
from newarrivals.indexer.catalog.writers import write_catalog

__all__ = ["write_synthetic"]


def write_synthetic(
    synth: SyntheticCatalog, out_dir: Path, *, fmt: str = "jsonl", progress: bool = True
) -> Path:
    """Draw the photos and write the catalogue and its ground truth to ``out_dir``.

    Writes ``images/<product_id>.png``, the catalogue files of
    :func:`newarrivals.indexer.catalog.writers.write_catalog` (``products.<fmt>``,
    ``interactions.<fmt>``) and ``ground_truth.json``. ``synth`` is not modified.

    Args:
        synth: Output of :func:`generate`.
        out_dir: Target directory; created if missing; existing files are overwritten.
        fmt: Catalogue file format, passed to ``write_catalog``.
        progress: Show a progress bar while drawing photos.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir).resolve()
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    config = synth.config

    products = []
    for i, product in enumerate(
        tqdm(synth.catalog.products, desc="drawing photos", unit="photo", disable=not progress)
    ):
        if product.image is None:
            products.append(product)
            continue
        # One stream per product: a photo depends only on the seed and the product's row.
        rng = random_stream(config.seed, STREAM_IMAGES, i)
        path = images / f"{product.product_id}.png"
        draw_product_image(product.attributes, rng, config.image_size).save(path, compress_level=1)
        products.append(replace(product, image=str(path)))

    catalog = Catalog(
        products=products, interactions=list(synth.catalog.interactions), root=out_dir
    )
    write_catalog(catalog, out_dir, fmt=fmt)
    (out_dir / GROUND_TRUTH_FILE).write_text(
        json.dumps(synth.truth.to_dict(), ensure_ascii=False), encoding="utf-8"
    )
    return out_dir
