"""Encode products one request at a time (live upserts, cold-start lookups) exactly as a build.

A bulk build (:func:`newarrivals.indexer.index.encoding.encode_products`) reads photos from disk and
goes through the embedding cache; a live request carries its photo in memory and is encoded
once. Both use the same pieces: :func:`~newarrivals.indexer.catalog.schema.product_document` for the
text, the text encoder's ``encode``, the image tower's ``encode_images`` (which pads to a
square the way :func:`~.image.load_photo` does) and :func:`~.fusion.fuse` with the
version's fusion config, so a product upserted live lands where a rebuild would put it.

:meth:`ProductEncoder.from_manifest` rebuilds the encoders from a published version's
manifest and checks their ids against the ones recorded there: a different model (say a
relative ``local-dir:`` path resolved from another working directory) would put live
products in a different vector space than the index, so it is refused, naming both ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from newarrivals.indexer.catalog.schema import Product, product_document
from newarrivals.indexer.encoders.fusion import FusionConfig, fuse, fused_dim
from newarrivals.indexer.encoders.image import ImageEncoder, ImageEncoderConfig, ImageEncoding
from newarrivals.indexer.encoders.onnx_encoders import load_image_export, load_text_export
from newarrivals.indexer.encoders.text import TextEncoder, TextEncoderConfig, TextEncoding
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.manifest import IndexManifest

__all__ = ["EncodedInputs", "ProductEncoder"]


@dataclass(frozen=True)
class EncodedInputs:
    """Fused vectors of products, row ``i`` for product ``i``, and which modalities they had.

    A row whose product had neither text nor a photo is all zeros (it cannot be indexed).
    """

    vectors: np.ndarray
    has_text: np.ndarray
    has_image: np.ndarray


class ProductEncoder:
    """The encoders and fusion of one index version, for products that arrive one by one.

    Example:
        >>> encoder = ProductEncoder.from_manifest(version.manifest, "cpu")  # doctest: +SKIP
        >>> encoder.encode([Product("new-1", title="Linen shirt")], [None]).vectors.shape
        ... # doctest: +SKIP
        (1, 576)
    """

    def __init__(
        self,
        text: TextEncoding | None,
        image: ImageEncoding | None,
        fusion: FusionConfig,
        dim: int,
    ) -> None:
        if text is None and image is None:
            raise ConfigError("a ProductEncoder needs a text encoder, an image encoder or both.")
        self.text = text
        self.image = image
        self.fusion = fusion
        self.dim = dim

    @classmethod
    def from_manifest(
        cls,
        manifest: IndexManifest,
        device: str = "cpu",
        *,
        onnx_cache: Path | None = None,
        threads: int | None = None,
    ) -> ProductEncoder:
        """The encoders a published version was built with (models load on first use).

        Args:
            manifest: The version's manifest.
            device: A resolved torch device.
            onnx_cache: An embedding cache holding verified ONNX copies of the encoders
                (:mod:`.onnx_encoders`); on the CPU they are used instead of torch, as a
                CPU build does, so serving need not import torch at all.
            threads: ONNX Runtime threads of those copies (``None``: its default).

        Raises:
            ConfigError: when an encoder rebuilt from the manifest's build config has a
                different id than the one recorded (naming both).
        """
        # A CPU build encodes with the cache's verified ONNX copies; serve the same way.
        copies = onnx_cache if device == "cpu" else None
        text: TextEncoding | None = None
        text_config = manifest.text_config
        if text_config:
            torch_text = TextEncoder(TextEncoderConfig.from_dict(text_config), device)
            recorded_text = manifest.encoders.text
            _check_id(
                "text", torch_text.encoder_id, None if recorded_text is None else recorded_text.id
            )
            text = torch_text
            if copies is not None:
                text = load_text_export(copies, torch_text.encoder_id, threads=threads) or text
        image: ImageEncoding | None = None
        image_config = manifest.image_config
        if image_config:
            torch_image = ImageEncoder(ImageEncoderConfig.from_dict(image_config), device)
            recorded_image = manifest.encoders.image
            _check_id(
                "image",
                torch_image.encoder_id,
                None if recorded_image is None else recorded_image.id,
            )
            image = torch_image
            if copies is not None:
                image = load_image_export(copies, torch_image.encoder_id, threads=threads) or image
        fusion = FusionConfig.from_dict(manifest.build_fusion)
        dim = manifest.dim
        return cls(text, image, fusion, dim)

    @property
    def runtime(self) -> str:
        """``onnx``, ``torch`` or ``mixed``: what runs the forward passes."""
        kinds = {
            "onnx" if type(e).__name__.startswith("Onnx") else "torch"
            for e in (self.text, self.image)
            if e is not None
        }
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def signature(self) -> dict[str, Any]:
        """What determines the vectors: encoder ids and fusion (two equal signatures give
        equal vectors for equal inputs)."""
        return {
            "text": None if self.text is None else self.text.encoder_id,
            "image": None if self.image is None else self.image.encoder_id,
            "fusion": self.fusion.to_dict(),
            "dim": self.dim,
        }

    def check_dim(self) -> None:
        """Load the models and check that they produce the manifest's dimension.

        Raises:
            ConfigError: naming both dimensions.
        """
        got = fused_dim(
            self.fusion,
            None if self.text is None else self.text.dim,
            None if self.image is None else self.image.dim,
        )
        if got != self.dim:
            raise ConfigError(
                f"the encoders produce {got}-dimensional product vectors but the index holds "
                f"{self.dim}-dimensional ones; serve the index with the models it was built with."
            )

    def encode(
        self, products: Sequence[Product], photos: Sequence[Image.Image | None]
    ) -> EncodedInputs:
        """Encode products and their decoded photos (``None``: no photo), fused.

        Args:
            products: The products (their text fields are read; ``image`` is ignored).
            photos: One entry per product.

        Returns:
            The fused unit vectors and the modality masks.
        """
        if len(photos) != len(products):
            raise ValueError(
                f"photos must have one entry per product: {len(products)} products, "
                f"{len(photos)} photos."
            )
        n = len(products)
        text_vecs: np.ndarray | None = None
        has_text = np.zeros(n, dtype=bool)
        if self.text is not None:
            docs = [product_document(p) for p in products]
            rows = [i for i, d in enumerate(docs) if d]
            text_vecs = np.zeros((n, self.text.dim), dtype=np.float32)
            if rows:
                text_vecs[rows] = self.text.encode([docs[i] for i in rows])
                has_text[rows] = True
        image_vecs: np.ndarray | None = None
        has_image = np.zeros(n, dtype=bool)
        if self.image is not None:
            rows = [i for i, photo in enumerate(photos) if photo is not None]
            image_vecs = np.zeros((n, self.image.dim), dtype=np.float32)
            if rows:
                image_vecs[rows] = self.image.encode_images(
                    [photo for photo in photos if photo is not None]
                )
                has_image[rows] = True
        vectors = fuse(self.fusion, text_vecs, has_text, image_vecs, has_image)
        return EncodedInputs(vectors=vectors, has_text=has_text, has_image=has_image)


def _check_id(what: str, actual: str, expected: str | None) -> None:
    if expected != actual:
        raise ConfigError(
            f"the {what} encoder rebuilt from the index manifest has id {actual!r}, but the "
            f"index was built with {expected!r}; serve from the working directory the index "
            "was built in (model paths in the manifest may be relative) or rebuild the index."
        )
