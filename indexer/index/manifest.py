"""The manifest of an index version: what was built, from what, with which encoders.

:class:`IndexManifest` is the one place that knows the keys of ``manifest.json``: the build
(:mod:`newarrivals.indexer.index.build`) creates one and :func:`publish_version
<newarrivals.indexer.index.version.publish_version>` writes it; everything that reads a
version (the loader, the product encoder, the fusion layout, the API) uses its attributes.
Loading checks that the counts are consistent and names both numbers when they are not.

The blocks that other configs own (the build config, the fusion, the ANN settings, the
per-stage statistics) are kept as the plain dicts their ``to_dict`` wrote, so this module
depends on nothing else in the package and any module may read a manifest.

Example:
    >>> from datetime import UTC, datetime
    >>> counts = IndexCounts(products_read=3, rejected_rows=0, image_rejects=0,
    ...     content_rejects=0, indexed=3, with_text=3, with_image=0, with_both=0,
    ...     interactions=0)
    >>> text = EncoderRecord(id="hash-32", model="hash", dim=32, runtime="torch")
    >>> manifest = IndexManifest(format_version=FORMAT_VERSION, version="v1",
    ...     built_at=datetime(2026, 1, 1, tzinfo=UTC), dim=32, counts=counts,
    ...     encoders=EncoderRecords(text=text, image=None), fusion={}, ann={}, device="cpu",
    ...     config={}, libraries={}, stats={})
    >>> IndexManifest.from_dict(manifest.to_dict()) == manifest
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from newarrivals.indexer.errors import IndexIntegrityError

__all__ = [
    "FORMAT_VERSION",
    "EncoderRecord",
    "EncoderRecords",
    "ImageEncoderRecord",
    "IndexCounts",
    "IndexManifest",
]

FORMAT_VERSION = 1
"""The manifest format this code writes and reads."""


def _field(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise IndexIntegrityError(
            f"the index manifest has no {where}{key!r}; rebuild the index with this version "
            "of newarrivals (`newarrivals build-index`)."
        )
    return data[key]


def _block(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = _field(data, key, "")
    if not isinstance(value, Mapping):
        raise IndexIntegrityError(
            f"the index manifest's {key!r} must be a JSON object, got {type(value).__name__}."
        )
    return dict(value)


@dataclass(frozen=True, slots=True)
class IndexCounts:
    """How many rows a build read, refused and indexed."""

    products_read: int
    rejected_rows: int
    image_rejects: int
    content_rejects: int
    indexed: int
    with_text: int
    with_image: int
    with_both: int
    interactions: int

    def __post_init__(self) -> None:
        if self.indexed > self.products_read:
            raise IndexIntegrityError(
                f"the index manifest counts {self.indexed} indexed products but only "
                f"{self.products_read} read; the manifest is corrupt, rebuild the index."
            )
        for name, part in (("with_text", self.with_text), ("with_image", self.with_image)):
            if part > self.indexed:
                raise IndexIntegrityError(
                    f"the index manifest counts {part} products {name} but only "
                    f"{self.indexed} indexed; the manifest is corrupt, rebuild the index."
                )
            if self.with_both > part:
                raise IndexIntegrityError(
                    f"the index manifest counts {self.with_both} products with both text and "
                    f"image but only {part} {name}; the manifest is corrupt, rebuild the index."
                )

    def to_dict(self) -> dict[str, int]:
        return {
            "products_read": self.products_read,
            "rejected_rows": self.rejected_rows,
            "image_rejects": self.image_rejects,
            "content_rejects": self.content_rejects,
            "indexed": self.indexed,
            "with_text": self.with_text,
            "with_image": self.with_image,
            "with_both": self.with_both,
            "interactions": self.interactions,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexCounts:
        return cls(
            **{name: int(_field(data, name, "counts.")) for name in cls.__dataclass_fields__}
        )


@dataclass(frozen=True, slots=True)
class EncoderRecord:
    """The encoder a version was built with: its id (checked on load), model, width, runtime."""

    id: str
    model: str
    dim: int
    runtime: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "dim": self.dim, "runtime": self.runtime}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderRecord:
        return cls(
            id=str(_field(data, "id", "encoders.text.")),
            model=str(_field(data, "model", "encoders.text.")),
            dim=int(_field(data, "dim", "encoders.text.")),
            runtime=str(_field(data, "runtime", "encoders.text.")),
        )


@dataclass(frozen=True, slots=True)
class ImageEncoderRecord:
    """An image encoder record: an :class:`EncoderRecord` plus its weights and training."""

    id: str
    model: str
    dim: int
    runtime: str
    pretrained: str | None
    trained: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "pretrained": self.pretrained,
            "trained": self.trained,
            "dim": self.dim,
            "runtime": self.runtime,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageEncoderRecord:
        where = "encoders.image."
        pretrained = _field(data, "pretrained", where)
        return cls(
            id=str(_field(data, "id", where)),
            model=str(_field(data, "model", where)),
            dim=int(_field(data, "dim", where)),
            runtime=str(_field(data, "runtime", where)),
            pretrained=None if pretrained is None else str(pretrained),
            trained=bool(_field(data, "trained", where)),
        )


@dataclass(frozen=True, slots=True)
class EncoderRecords:
    """The text and image encoders of a version; ``None`` for a modality not indexed."""

    text: EncoderRecord | None
    image: ImageEncoderRecord | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": None if self.text is None else self.text.to_dict(),
            "image": None if self.image is None else self.image.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderRecords:
        text = data.get("text")
        image = data.get("image")
        return cls(
            text=None if text is None else EncoderRecord.from_dict(text),
            image=None if image is None else ImageEncoderRecord.from_dict(image),
        )


@dataclass(frozen=True)
class IndexManifest:
    """Everything recorded about one published index version.

    Args:
        format_version: :data:`FORMAT_VERSION` of the code that wrote it.
        version: The version's directory name.
        built_at: ISO-8601 build time (UTC).
        dim: Width of the fused product vectors.
        counts: Rows read, refused and indexed.
        encoders: The encoders the vectors came from.
        fusion: The fusion settings (``FusionConfig.to_dict``).
        ann: The FAISS settings used (``AnnConfig.to_dict``).
        device: The device the build encoded on.
        config: The whole build config (``BuildConfig.to_dict``).
        libraries: Library name -> installed version at build time.
        stats: Stage name -> work done (``StageStats`` as a dict).
        content_hashes: File name -> sha256 of every file but the manifest; filled in when
            the version is published.
    """

    format_version: int
    version: str
    built_at: datetime
    dim: int
    counts: IndexCounts
    encoders: EncoderRecords
    fusion: dict[str, Any]
    ann: dict[str, Any]
    device: str
    config: dict[str, Any]
    libraries: dict[str, str]
    stats: dict[str, dict[str, Any]]
    content_hashes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise IndexIntegrityError(
                f"the index manifest's dim must be positive, got {self.dim}; rebuild the index."
            )

    @property
    def catalog(self) -> str | None:
        """The catalogue the version was built from, as the build config recorded it."""
        value = self.config.get("catalog")
        return None if value is None else str(value)

    @property
    def cache_dir(self) -> str | None:
        """The embedding cache the build used, when one was set explicitly."""
        value = self.config.get("cache_dir")
        return None if value is None else str(value)

    @property
    def text_config(self) -> dict[str, Any] | None:
        """The text encoder's config (``TextEncoderConfig.to_dict``), if text was indexed."""
        value = self.config.get("text")
        return dict(value) if value else None

    @property
    def image_config(self) -> dict[str, Any] | None:
        """The image encoder's config (``ImageEncoderConfig.to_dict``), if photos were."""
        value = self.config.get("image")
        return dict(value) if value else None

    @property
    def build_fusion(self) -> dict[str, Any]:
        """The fusion settings of the build config (``FusionConfig.to_dict``)."""
        return dict(_block(self.config, "fusion"))

    @property
    def stage_seconds(self) -> float:
        """Seconds spent in every build stage together."""
        return sum(float(stage.get("seconds", 0.0)) for stage in self.stats.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``manifest.json`` holds."""
        return {
            "format_version": self.format_version,
            "version": self.version,
            "built_at": self.built_at.isoformat(),
            "dim": self.dim,
            "counts": self.counts.to_dict(),
            "encoders": self.encoders.to_dict(),
            "fusion": self.fusion,
            "ann": self.ann,
            "device": self.device,
            "config": self.config,
            "libraries": self.libraries,
            "stats": self.stats,
            "content_hashes": self.content_hashes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexManifest:
        """Read a manifest, checking its format version and its counts.

        Raises:
            IndexIntegrityError: The format version is not :data:`FORMAT_VERSION`, a key is
                missing, or the counts contradict each other (naming both numbers).
        """
        found = data.get("format_version")
        if found != FORMAT_VERSION:
            raise IndexIntegrityError(
                f"index format {found}, this code reads {FORMAT_VERSION}; rebuild the index "
                "with this version of newarrivals."
            )
        return cls(
            format_version=FORMAT_VERSION,
            version=str(_field(data, "version", "")),
            built_at=datetime.fromisoformat(str(_field(data, "built_at", ""))),
            dim=int(_field(data, "dim", "")),
            counts=IndexCounts.from_dict(_block(data, "counts")),
            encoders=EncoderRecords.from_dict(_block(data, "encoders")),
            fusion=_block(data, "fusion"),
            ann=_block(data, "ann"),
            device=str(_field(data, "device", "")),
            config=_block(data, "config"),
            libraries={str(k): str(v) for k, v in _block(data, "libraries").items()},
            stats={str(k): dict(v) for k, v in _block(data, "stats").items()},
            content_hashes={
                str(k): str(v) for k, v in dict(data.get("content_hashes") or {}).items()
            },
        )

    def write(self, path: Path) -> None:
        """Write the manifest as pretty-printed JSON with sorted keys."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def read(cls, path: Path) -> IndexManifest:
        """Read and check a ``manifest.json``.

        Raises:
            IndexIntegrityError: As :meth:`from_dict`, with the file named.
        """
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except IndexIntegrityError as exc:
            raise IndexIntegrityError(f"{path}: {exc}") from exc
