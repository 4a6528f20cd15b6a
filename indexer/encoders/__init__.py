"""Encoders: product text and photos -> unit vectors, and their fusion."""

from __future__ import annotations

from newarrivals.indexer.encoders.base import Encoder, file_digest, l2_normalize, text_digest
from newarrivals.indexer.encoders.fusion import FusionConfig, FusionMode, fuse, fused_dim
from newarrivals.indexer.encoders.image import (
    BUILTIN_TOWERS,
    ImageEncoder,
    ImageEncoderConfig,
    ImageEncodeResult,
    ImageEncoding,
    UnreadableImageError,
    decode_photo,
    load_photo,
)
from newarrivals.indexer.encoders.text import (
    BUNDLED_MINILM,
    TextEncoder,
    TextEncoderConfig,
    TextEncoding,
    bundled_minilm_path,
)

__all__ = [
    "BUILTIN_TOWERS",
    "BUNDLED_MINILM",
    "Encoder",
    "FusionConfig",
    "FusionMode",
    "ImageEncodeResult",
    "ImageEncoder",
    "ImageEncoderConfig",
    "ImageEncoding",
    "TextEncoder",
    "TextEncoderConfig",
    "TextEncoding",
    "UnreadableImageError",
    "bundled_minilm_path",
    "decode_photo",
    "file_digest",
    "fuse",
    "fused_dim",
    "l2_normalize",
    "load_photo",
    "text_digest",
]
