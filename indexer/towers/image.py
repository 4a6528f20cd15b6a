"""Train an open_clip image tower into the text encoder's space (``newarrivals align-images``).

A photo should land near its own product's text. The text encoder stays frozen; the image
tower learns with InfoNCE over in-batch negatives (photo -> text, and text -> photo when
``symmetric``) and a learnable temperature. Once trained, a product with a photo but no text
gets a vector in the same space as the products with text, so fusion mode ``sum`` works and
image-only new arrivals can be recommended.

How the training is made cheap on CPU:

* every photo is decoded once (padded to a square by :func:`load_photo`, resized to the
  tower's input size) into one ``uint8`` tensor held in memory; an epoch is then only tensor
  work;
* augmentation runs on whole batches of that tensor (one affine resample for crop, scale and
  flip; brightness, contrast and saturation as per-image factors). Hue is never jittered:
  colour is a product attribute the text names;
* the time budget (``max_minutes``) is the main stopping rule, and the learning rate follows
  a cosine over whichever of time or epochs runs out first; the checkpoint kept is the one
  with the best held-out Recall@10 (small data overfits: more passes stop helping early).

The artifact is open_clip's ``local-dir`` format plus a manifest::

    <out_dir>/
      open_clip_config.json        # {"model_cfg": ..., "preprocess_cfg": ...}
      open_clip_model.safetensors  # the whole CLIP; its text tower is a minimal stub
      tower.json                   # config, library versions, timings, held-out recall

and loads with ``ImageEncoder(ImageEncoderConfig(model=f"local-dir:{out_dir}"))``. The saved
preprocess (resize the shortest side, centre-crop, bicubic) applied to a photo already padded
to a square is exactly the resize the training cache used, so served vectors equal the
vectors measured here.

Modules: settings, report and the artifact directory in :mod:`.image_config`, the open_clip
model and starting weights in :mod:`.image_model`, the photo cache and batches in
:mod:`.image_photos`, the training loop in :mod:`.image_training`; this module reads a
catalogue and runs them (:func:`align_images`).

Example:
    >>> config = ImageTowerConfig(architecture="vit-micro", image_size=32, max_minutes=0.5)
    >>> report = align_images(Path("catalog"), Path("tower"), config)  # doctest: +SKIP
    >>> print(report.format())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

from newarrivals.indexer.encoders import (
    FusionConfig,
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.towers.image_config import LOCAL_PREFIX, ImageTowerConfig, ImageTowerReport
from newarrivals.indexer.towers.image_training import train_image_tower

__all__ = ["align_images"]

logger = logging.getLogger(__name__)


def align_images(
    catalog_path: Path,
    out_dir: Path,
    config: ImageTowerConfig,
    *,
    text_config: TextEncoderConfig | None = None,
    cache_dir: Path | None = None,
    launched_before: datetime | None = None,
    max_test: int = 1000,
    progress: bool = True,
) -> ImageTowerReport:
    """Read a catalogue, encode its text (through the embedding cache), train and save a tower.

    Then embeds the products that have a photo but no text with the saved tower (through
    :class:`ImageEncoder`, the serving path) and counts how many got a vector in the text
    space.

    Args:
        catalog_path: a generic-schema catalogue or an H&M-layout folder.
        out_dir: where the tower goes.
        config: training settings (``config.device`` also runs the text encoder).
        text_config: the frozen text encoder whose space the tower learns; default MiniLM.
        cache_dir: embedding cache for the text vectors; ``None`` uses a throw-away one.
        launched_before: train only on products launched before this instant (products
            without a launch date are left out too), so a cold-start evaluation after it is
            free of leakage. Up to ``max_test`` products launched at or after it, with text
            and a photo, are measured as the ``test`` set.
        max_test: cap on the test set (a seeded sample), so its recall is comparable.
        progress: show progress bars.

    Returns:
        The training report plus the photo-only counts.
    """
    from newarrivals.indexer.catalog.readers import read_catalog
    from newarrivals.indexer.device import resolve_device
    from newarrivals.indexer.index.encoding import encode_products

    text_config = text_config if text_config is not None else TextEncoderConfig()
    if launched_before is not None and launched_before.utcoffset() is None:
        raise ConfigError(
            f"launched_before must be timezone-aware, got {launched_before!r}; "
            "e.g. datetime(2020, 6, 22, tzinfo=UTC)."
        )
    if max_test < 0:
        raise ConfigError(f"max_test must be >= 0, got {max_test}.")
    catalog = read_catalog(catalog_path)
    products = catalog.products
    logger.info("read %d products from %s", len(products), catalog_path)
    device = resolve_device(config.device)
    with tempfile.TemporaryDirectory(prefix="na-align-cache-") as scratch:
        encoded = encode_products(
            products,
            text_encoder=TextEncoder(text_config, device),
            image_encoder=None,
            fusion=FusionConfig(),
            cache_root=cache_dir if cache_dir is not None else Path(scratch),
            progress=progress,
        )
    if encoded.text is None:  # pragma: no cover - a text encoder was given
        raise ConfigError("text encoding produced no vectors.")
    text = encoded.text

    train_idx = list(range(len(products)))
    test_idx: list[int] = []
    if launched_before is not None:
        train_idx = [
            i
            for i, p in enumerate(products)
            if p.launched_at is not None and p.launched_at < launched_before
        ]
        later = [
            i
            for i, p in enumerate(products)
            if p.launched_at is not None
            and p.launched_at >= launched_before
            and p.has_image
            and encoded.has_text[i]
        ]
        if len(later) > max_test:
            pick = np.random.default_rng(config.seed).choice(len(later), max_test, replace=False)
            later = [later[j] for j in np.sort(pick)]
        test_idx = later
        logger.info(
            "training on %d products launched before %s; %d later ones for the test set",
            len(train_idx),
            launched_before.isoformat(),
            len(test_idx),
        )
    report = train_image_tower(
        [products[i] for i in train_idx],
        text[train_idx],
        replace(config, device=device),
        out_dir,
        test_products=[products[i] for i in test_idx],
        test_text_vectors=text[test_idx] if test_idx else None,
        launched_before=launched_before,
        progress=progress,
    )

    photo_only = [p for i, p in enumerate(products) if p.has_image and not encoded.has_text[i]]
    embedded = 0
    if photo_only:
        encoder = ImageEncoder(ImageEncoderConfig(model=f"{LOCAL_PREFIX}{out_dir}"), device)
        result = encoder.encode_paths([str(p.image) for p in photo_only])
        norms = np.linalg.norm(result.vectors, axis=1)
        good = result.ok & (np.abs(norms - 1.0) < 1e-3) & (result.vectors.shape[1] == text.shape[1])
        embedded = int(good.sum())
    return replace(report, photo_only=len(photo_only), photo_only_embedded=embedded)
