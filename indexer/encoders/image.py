"""Image encoder: an open_clip image tower.

Three ways to name the tower:

* an open_clip model name plus ``pretrained`` — an open_clip tag (downloads where there is
  internet) or a local checkpoint file — the way users with internet use open_clip;
* ``local-dir:PATH`` — a directory with ``open_clip_config.json`` and
  ``open_clip_model.safetensors`` (open_clip's own local format; our trained towers use it);
* ``builtin:tiny`` — a small ViT defined here. Without a checkpoint its weights are a seeded
  random initialisation: it exists so the pipeline runs offline before a tower is trained,
  and the manifest records ``trained: false`` so nobody mistakes it for a real model.

Photos are padded to a square before the tower's own preprocess, because the usual
resize-then-centre-crop cuts a third off a 2:3 product photo.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from newarrivals.indexer.encoders.base import directory_digest, file_digest, l2_normalize
from newarrivals.indexer.errors import ConfigError, MissingExtraError, NewArrivalsError

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUILTIN_TOWERS",
    "ImageEncodeResult",
    "ImageEncoder",
    "ImageEncoderConfig",
    "ImageEncoding",
    "UnreadableImageError",
    "decode_photo",
    "load_photo",
]

logger = logging.getLogger(__name__)

#: Small open_clip configs defined in-project (a CLIP needs a text tower; ours is minimal
#: because only the image tower is used).
BUILTIN_TOWERS: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dim": 384,
        "vision_cfg": {
            "image_size": 64,
            "layers": 3,
            "width": 128,
            "head_width": 32,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 1,
        },
    },
}

_BUILTIN_PREFIX = "builtin:"
_LOCAL_PREFIX = "local-dir:"
_WHITE = (255, 255, 255)


class UnreadableImageError(NewArrivalsError):
    """A photo file is missing or cannot be decoded."""


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Which image tower encodes product photos.

    Args:
        model: open_clip model name (``ViT-B-32``), ``local-dir:PATH``, or ``builtin:tiny``.
        pretrained: open_clip pretrained tag or local checkpoint path (only with a model name).
        batch_size: photos per forward pass.
        pad_to_square: pad (white) instead of cropping non-square photos.
        seed: seed of the random initialisation when no weights are given.
        workers: threads decoding photos while the model runs.
    """

    model: str = "builtin:tiny"
    pretrained: str | None = None
    batch_size: int = 64
    pad_to_square: bool = True
    seed: int = 0
    workers: int = 2

    def __post_init__(self) -> None:
        if self.model.startswith(_BUILTIN_PREFIX):
            name = self.model[len(_BUILTIN_PREFIX) :]
            if name not in BUILTIN_TOWERS:
                raise ConfigError(
                    f"unknown built-in image tower {name!r}; choose one of "
                    f"{', '.join(_BUILTIN_PREFIX + n for n in BUILTIN_TOWERS)}."
                )
        if self.model.startswith((_BUILTIN_PREFIX, _LOCAL_PREFIX)) and self.pretrained:
            raise ConfigError(
                f"image.pretrained={self.pretrained!r} only applies to an open_clip model name; "
                f"{self.model!r} carries its own weights. Drop image.pretrained."
            )
        if self.batch_size < 1:
            raise ConfigError(
                f"image.batch_size must be a positive integer, got {self.batch_size}."
            )
        if self.workers < 1:
            raise ConfigError(f"image.workers must be a positive integer, got {self.workers}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageEncoderConfig:
        return cls(**data)


@dataclass(frozen=True)
class ImageEncodeResult:
    """Vectors for the photos that decoded, and the reason for each one that did not."""

    vectors: np.ndarray
    ok: np.ndarray
    failures: dict[int, str]


def load_photo(path: str | Path, *, pad_to_square: bool = True) -> Image.Image:
    """Open a photo as RGB, padded to a square on white when asked.

    Raises:
        UnreadableImageError: naming the path and what went wrong.
    """
    p = Path(path)
    try:
        with Image.open(p) as img:
            img.load()
            rgb = img.convert("RGB")
    except FileNotFoundError as exc:
        raise UnreadableImageError(f"image file not found: {p}") from exc
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"cannot decode image {p}: {exc}") from exc
    if pad_to_square and rgb.width != rgb.height:
        side = max(rgb.width, rgb.height)
        rgb = ImageOps.pad(rgb, (side, side), color=_WHITE)
    return rgb


def decode_photo(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an uploaded photo (bytes that never touched disk) to RGB.

    Pass the result to :meth:`ImageEncoder.encode_images`, which pads it to a square exactly
    as :func:`load_photo` does for a file.

    Args:
        data: The encoded image (JPEG, PNG, WebP, ...).
        max_pixels: Refuse images with more pixels than this before decoding them (a small
            file can decode to gigabytes); ``None`` keeps PIL's own limit.

    Raises:
        UnreadableImageError: naming what went wrong (not an image, truncated, too large).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise UnreadableImageError(
                    f"image is {img.width}x{img.height} = {img.width * img.height:,} pixels, "
                    f"over the {max_pixels:,}-pixel limit; send a smaller photo."
                )
            img.load()
            return img.convert("RGB")
    except UnreadableImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"cannot decode image ({len(data)} bytes): {exc}") from exc


class ImageEncoding(Protocol):
    """What the build needs of an image encoder: the torch one or its ONNX copy."""

    @property
    def encoder_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode_paths(self, paths: Sequence[str | Path]) -> ImageEncodeResult: ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class ImageEncoder:
    """Encodes product photos with an open_clip image tower; loads it on first use.

    Example:
        >>> enc = ImageEncoder(ImageEncoderConfig(model="builtin:tiny"))  # doctest: +SKIP
        >>> enc.encode_paths(["shirt.jpg"]).vectors.shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, config: ImageEncoderConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device

    @property
    def trained(self) -> bool:
        """False for a random initialisation (no checkpoint, no pretrained tag)."""
        if self.config.model.startswith(_LOCAL_PREFIX):
            return True
        return bool(self.config.pretrained)

    @cached_property
    def encoder_id(self) -> str:
        cfg = self.config
        if cfg.model.startswith(_LOCAL_PREFIX):
            weights = "sha256:" + directory_digest(Path(cfg.model[len(_LOCAL_PREFIX) :]))[:16]
        elif cfg.pretrained and Path(cfg.pretrained).is_file():
            weights = "sha256:" + file_digest(Path(cfg.pretrained))[:16]
        elif cfg.pretrained:
            weights = cfg.pretrained
        else:
            weights = f"random-seed{cfg.seed}"
        return f"image:{cfg.model}:{weights}:pad={int(cfg.pad_to_square)}"

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        try:
            import open_clip
            import torch
        except ImportError as exc:  # pragma: no cover - hard dependency
            raise MissingExtraError(
                "image encoding needs open_clip: `pip install open_clip_torch torchvision`."
            ) from exc
        cfg = self.config
        logger.info(
            "loading image tower %s (pretrained=%s) on %s", cfg.model, cfg.pretrained, self.device
        )
        # Seed only a forked RNG: a random initialisation must be reproducible (it is part of
        # the cache key) without touching the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if cfg.model.startswith(_BUILTIN_PREFIX):
                model_cfg = copy.deepcopy(BUILTIN_TOWERS[cfg.model[len(_BUILTIN_PREFIX) :]])
                model = open_clip.CLIP(**model_cfg)
                size = model_cfg["vision_cfg"]["image_size"]
                preprocess = open_clip.image_transform(size, is_train=False)
            else:
                try:
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        cfg.model, pretrained=cfg.pretrained, device="cpu"
                    )
                except RuntimeError as exc:
                    raise ConfigError(
                        f"open_clip could not load model {cfg.model!r} with pretrained="
                        f"{cfg.pretrained!r}: {exc}. Without internet, pass a local checkpoint "
                        "path as pretrained, or a local-dir: tower."
                    ) from exc
        model = model.to(self.device).eval()
        return model, preprocess

    @property
    def model(self) -> Any:
        return self._loaded[0]

    @cached_property
    def dim(self) -> int:
        visual = self.model.visual
        out = getattr(visual, "output_dim", None)
        if out is None:
            out = int(self._embed(self._loaded[1](Image.new("RGB", (8, 8))).unsqueeze(0)).shape[1])
        return int(out)

    def _embed(self, batch: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(batch.to(self.device))
        return l2_normalize(feats.float().cpu().numpy())

    def _prepare(self, path: str | Path) -> torch.Tensor:
        preprocess = self._loaded[1]
        tensor: torch.Tensor = preprocess(load_photo(path, pad_to_square=self.config.pad_to_square))
        return tensor

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode already-decoded photos (used for uploads that never touch disk)."""
        import torch

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        preprocess = self._loaded[1]
        prepared = [
            preprocess(
                ImageOps.pad(im.convert("RGB"), (max(im.size),) * 2, color=_WHITE)
                if self.config.pad_to_square
                else im.convert("RGB")
            )
            for im in images
        ]
        return self._embed(torch.stack(prepared))

    def encode_paths(self, paths: Sequence[str | Path]) -> ImageEncodeResult:
        """Encode photos from disk; an unreadable photo is reported, not fatal.

        Returns:
            ``vectors`` (``(n, dim)``, zero rows where decoding failed), ``ok`` (bool mask)
            and ``failures`` (row -> reason).
        """
        import torch

        n = len(paths)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        failures: dict[int, str] = {}
        bs = self.config.batch_size

        def prepare(i: int) -> tuple[int, torch.Tensor | None, str | None]:
            try:
                return i, self._prepare(paths[i]), None
            except UnreadableImageError as exc:
                return i, None, str(exc)

        # Decoding runs in threads (PIL releases the GIL) while torch runs the batch.
        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            for start in range(0, n, bs):
                rows = list(pool.map(prepare, range(start, min(start + bs, n))))
                good = [(i, t) for i, t, _ in rows if t is not None]
                for i, _, err in rows:
                    if err is not None:
                        failures[i] = err
                if good:
                    idx = [i for i, _ in good]
                    vectors[idx] = self._embed(torch.stack([t for _, t in good]))
                    ok[idx] = True
        return ImageEncodeResult(vectors=vectors, ok=ok, failures=failures)
