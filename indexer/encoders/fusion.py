"""Fusion of a product's text and image vectors into one product vector.

Two modes:

``concat`` (default while the image tower is not aligned to the text space)
    ``[w_t * t, w_i * i]`` then L2-normalised. The two blocks are separate subspaces, so
    any dims work. A missing modality is a zero block: a text-only product's similarity to
    a user is the text similarity scaled by the text block's share of the user's vector.

``sum`` (for an image tower trained into the text space, same dim)
    ``w_t * t + w_i * i`` then L2-normalised. A missing modality is dropped and the present
    one is used alone (after normalisation its weight no longer matters), so products with
    one modality live in the same space as products with both.

A product with neither modality has no vector; the build pipeline quarantines it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import BoolArray, F64Array
from newarrivals.indexer.encoders.base import l2_normalize
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.manifest import IndexManifest

__all__ = [
    "ABSENT_NORM",
    "ConcatLayout",
    "FusionConfig",
    "FusionMode",
    "fuse",
    "fused_dim",
    "late_fuse",
]


#: A block whose norm is below this is "the product lacks the modality" (fuse() writes 0).
ABSENT_NORM: Final = 1e-6


class FusionMode(StrEnum):
    CONCAT = "concat"
    SUM = "sum"


@dataclass(frozen=True)
class FusionConfig:
    """How the modalities combine; weights are relative (only their ratio matters)."""

    mode: FusionMode = FusionMode.CONCAT
    text_weight: float = 1.0
    image_weight: float = 0.5

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", FusionMode(self.mode))
        except ValueError:
            raise ConfigError(
                f"fusion.mode must be one of {', '.join(m.value for m in FusionMode)}; "
                f"got {self.mode!r}."
            ) from None
        for name in ("text_weight", "image_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0 and np.isfinite(value)):
                raise ConfigError(f"fusion.{name} must be a finite number >= 0, got {value!r}.")
        if self.text_weight == 0 and self.image_weight == 0:
            raise ConfigError("fusion weights are both 0; give at least one modality weight > 0.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"] = self.mode.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        return cls(**data)


def fused_dim(config: FusionConfig, text_dim: int | None, image_dim: int | None) -> int:
    """The product-vector dimension for the encoders in use (``None``: modality disabled)."""
    dims = [d for d in (text_dim, image_dim) if d is not None]
    if not dims:
        raise ConfigError("at least one encoder (text or image) must be enabled.")
    if config.mode is FusionMode.SUM:
        if len(set(dims)) > 1:
            raise ConfigError(
                f"fusion.mode='sum' needs equal dims, but text is {text_dim} and image is "
                f"{image_dim}; use fusion.mode='concat' or an image tower aligned to the text "
                "space (newarrivals align-images)."
            )
        return dims[0]
    return sum(dims)


def fuse(
    config: FusionConfig,
    text: np.ndarray | None,
    has_text: np.ndarray | None,
    image: np.ndarray | None,
    has_image: np.ndarray | None,
) -> np.ndarray:
    """Combine per-modality unit vectors row by row.

    Args:
        config: fusion mode and weights.
        text: ``(n, d_t)`` text vectors or ``None`` when text encoding is disabled.
        has_text: ``(n,)`` bool, which rows have text.
        image: ``(n, d_i)`` image vectors or ``None`` when image encoding is disabled.
        has_image: ``(n,)`` bool, which rows have a decoded photo.

    Returns:
        ``(n, dim)`` float32 unit vectors; all-zero rows for products with neither modality.
    """
    blocks: list[np.ndarray] = []
    for vecs, mask, weight in (
        (text, has_text, config.text_weight),
        (image, has_image, config.image_weight),
    ):
        if vecs is None:
            continue
        present = np.ones(len(vecs), dtype=bool) if mask is None else np.asarray(mask, bool)
        blocks.append(np.where(present[:, None], vecs, 0.0).astype(np.float32) * weight)
    if not blocks:
        raise ConfigError("fuse() needs at least one modality.")
    if config.mode is FusionMode.SUM:
        fused = blocks[0] if len(blocks) == 1 else blocks[0] + blocks[1]
    else:
        fused = np.concatenate(blocks, axis=1)
    return l2_normalize(fused)


@dataclass(frozen=True)
class ConcatLayout:
    """Where each modality sits in a concat-fused index vector: the inverse of :func:`fuse`.

    Each block of a concat vector is one modality's unit vector times a per-product
    constant, so renormalising a block gives the modality's vector back (an all-zero block:
    the product lacks it).

    Args:
        blocks: ``(modality, start, stop)`` column ranges, in vector order.
        fusion: The index's fusion (mode and weights).

    Example:
        >>> layout = ConcatLayout((("text", 0, 2), ("image", 2, 4)), FusionConfig())
        >>> vectors, present = layout.split(np.array([[0.8, 0.0, 0.0, 0.6]]))["image"]
        >>> vectors.tolist(), present.tolist()
        ([[0.0, 1.0]], [True])
    """

    blocks: tuple[tuple[str, int, int], ...]
    fusion: FusionConfig

    @classmethod
    def from_manifest(cls, manifest: IndexManifest) -> ConcatLayout:
        """The layout an index version's manifest describes.

        Raises:
            ConfigError: for a fusion other than concat (a sum mixes the modalities, so no
                block can be read back), or encoder dims that do not add up to the index's.
        """
        fusion = FusionConfig(**manifest.fusion)
        if fusion.mode is not FusionMode.CONCAT:
            raise ConfigError(
                f"the index fuses by {fusion.mode.value!r}; the per-modality blend features "
                "need concat fusion (the default), where each modality keeps its own columns."
            )
        blocks: list[tuple[str, int, int]] = []
        start = 0
        for name, record in (("text", manifest.encoders.text), ("image", manifest.encoders.image)):
            if record is None:
                continue
            blocks.append((name, start, start + record.dim))
            start += record.dim
        if not blocks or start != manifest.dim:
            raise ConfigError(
                f"the index manifest's encoder dims {[(b[0], b[2] - b[1]) for b in blocks]} do "
                f"not add up to its dim {manifest.dim!r}; rebuild the index."
            )
        return cls(tuple(blocks), fusion)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.blocks)

    @property
    def dim(self) -> int:
        return self.blocks[-1][2]

    def split(self, fused: npt.ArrayLike) -> dict[str, tuple[F64Array, BoolArray]]:
        """Per modality: the unit vectors of ``(n, dim)`` fused rows, and which rows have it."""
        x = np.asarray(fused, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        out: dict[str, tuple[F64Array, BoolArray]] = {}
        for name, start, stop in self.blocks:
            block = x[:, start:stop]
            present = np.linalg.norm(block, axis=1) > ABSENT_NORM
            unit = l2_normalize(block.astype(np.float32)).astype(np.float64)
            unit[~present] = 0.0
            out[name] = (unit, present)
        return out


def late_fuse(parts: Sequence[npt.ArrayLike], axis: int) -> F64Array:
    """Late fusion of per-modality scores: each part z-normalised along ``axis`` over its
    finite values, then, per item, the mean of the z-scores of the parts that can score it
    (``-inf`` where none can).

    z-normalising puts modalities on one scale however different their raw cosine ranges
    are (MiniLM text cosines sit in a narrow high band, photo ones in a wide low one). A
    part that is constant along ``axis`` contributes 0.

    Example:
        >>> late_fuse([[1.0, 3.0, float("nan")], [2.0, 2.0, 4.0]], axis=0).round(2).tolist()
        [-0.85, 0.15, 1.41]
    """
    total: F64Array | None = None
    count: F64Array | None = None
    for part in parts:
        raw = np.asarray(part, dtype=np.float64)
        finite = np.isfinite(raw)
        masked = np.where(finite, raw, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nanmean(masked, axis=axis, keepdims=True)
            std = np.nanstd(masked, axis=axis, keepdims=True)
        z = np.where(std > 0, (masked - mean) / np.where(std > 0, std, 1.0), 0.0)
        add = np.where(finite, z, 0.0)
        total = add if total is None else total + add
        count = finite.astype(np.float64) if count is None else count + finite
    if total is None or count is None:
        raise ConfigError("late_fuse() needs at least one part.")
    out: F64Array = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    return out
