"""The ONNX copy of the image tower, with its torchvision preprocessing replayed in PIL + NumPy."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from newarrivals.indexer.encoders.base import file_digest, l2_normalize
from newarrivals.indexer.encoders.image import ImageEncodeResult, UnreadableImageError, load_photo
from newarrivals.indexer.encoders.onnx_encoders.common import (
    IMAGE_TOLERANCE,
    MODEL_FILE,
    OnnxExport,
    export_folder,
    keep_if_verified,
    quiet_tracing,
    read_meta,
)

if TYPE_CHECKING:
    from newarrivals.indexer.encoders.image import ImageEncoder

__all__ = ["ImageRecipe", "OnnxImageEncoder", "export_image", "image_recipe", "load_image_export"]

logger = logging.getLogger(__name__)

_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_WHITE = (255, 255, 255)
#: Steps the replay does implicitly: photos are already RGB, and scaling to [0, 1] is
#: part of :meth:`ImageRecipe.apply`.
_PASSIVE_STEPS = {"MaybeToTensor", "ToTensor", "MaybeConvertMode", "_convert_to_rgb"}


@dataclass(frozen=True)
class ImageRecipe:
    """A tower's evaluation preprocessing, in terms PIL and NumPy can replay.

    ``resize`` is the short side after resizing, ``crop`` the side of the centre crop.
    """

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, image: Image.Image) -> np.ndarray:
        """``(3, crop, crop)`` float32, as torchvision's PIL pipeline computes it."""
        img = image.convert("RGB")
        w, h = img.size
        # torchvision: the short side becomes ``resize``, the long side is truncated.
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        if size != img.size:
            img = img.resize(size, _PIL_FILTERS[self.interpolation])
        w, h = img.size
        top = round((h - self.crop) / 2.0)
        left = round((w - self.crop) / 2.0)
        img = img.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        out: np.ndarray = (x - mean) / std
        return out


def _single_int(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, list | tuple) and len(size) in (1, 2) and len(set(size)) == 1:
        return int(size[0])
    return None


def image_recipe(preprocess: Any) -> ImageRecipe | str:
    """Read a torchvision ``Compose`` into an :class:`ImageRecipe`, or say why it can't be."""
    steps = getattr(preprocess, "transforms", None)
    if steps is None:
        return f"preprocess {type(preprocess).__name__} is not a torchvision Compose"
    found: dict[str, Any] = {}
    for step in steps:
        name = getattr(step, "__name__", type(step).__name__)
        if name == "Resize":
            size = step.size if isinstance(step.size, int) else _single_int(step.size)
            interp = str(getattr(step.interpolation, "value", step.interpolation))
            if isinstance(step.size, list | tuple) and len(step.size) == 2:
                return "Resize to a fixed (h, w) is not replayed"
            if size is None or interp not in _PIL_FILTERS or step.max_size is not None:
                return f"unsupported Resize({step.size}, {interp}, max_size={step.max_size})"
            found["resize"], found["interpolation"] = size, interp
        elif name == "CenterCrop":
            crop = _single_int(step.size)
            if crop is None:
                return f"unsupported CenterCrop({step.size})"
            found["crop"] = crop
        elif name == "Normalize":
            found["mean"] = tuple(float(v) for v in step.mean)
            found["std"] = tuple(float(v) for v in step.std)
        elif name not in _PASSIVE_STEPS or getattr(step, "mode", "RGB") != "RGB":
            return f"preprocess step {name} is not replayed"
    missing = {"resize", "crop", "mean", "std"} - found.keys()
    if missing:
        return f"preprocess lacks {sorted(missing)}"
    if found["crop"] > found["resize"]:
        return f"CenterCrop({found['crop']}) larger than Resize({found['resize']}) pads"
    return ImageRecipe(**found)


class OnnxImageEncoder(OnnxExport):
    """The ONNX copy of an open_clip image tower (same ``encoder_id``)."""

    def __init__(self, folder: Path, meta: dict[str, Any], *, threads: int | None = None) -> None:
        super().__init__(folder, meta, threads=threads)
        self.recipe = ImageRecipe(
            resize=int(meta["recipe"]["resize"]),
            crop=int(meta["recipe"]["crop"]),
            interpolation=str(meta["recipe"]["interpolation"]),
            mean=tuple(meta["recipe"]["mean"]),
            std=tuple(meta["recipe"]["std"]),
        )

    @property
    def pad_to_square(self) -> bool:
        return bool(self.meta["pad_to_square"])

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalize(self.session.run(None, {"pixels": batch})[0])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode already-decoded photos (padded to square like the torch encoder)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        prepared = [
            self.recipe.apply(
                ImageOps.pad(im.convert("RGB"), (max(im.size),) * 2, color=_WHITE)
                if self.pad_to_square
                else im
            )
            for im in images
        ]
        return self._embed(np.stack(prepared))

    def encode_paths(self, paths: Sequence[str | Path]) -> ImageEncodeResult:
        """Encode photos from disk; an unreadable photo is reported, not fatal."""
        n = len(paths)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        failures: dict[int, str] = {}
        bs = int(self.meta["batch_size"])

        def prepare(i: int) -> tuple[int, np.ndarray | None, str | None]:
            try:
                photo = load_photo(paths[i], pad_to_square=self.pad_to_square)
            except UnreadableImageError as exc:
                return i, None, str(exc)
            return i, self.recipe.apply(photo), None

        with ThreadPoolExecutor(max_workers=int(self.meta["workers"])) as pool:
            for start in range(0, n, bs):
                rows = list(pool.map(prepare, range(start, min(start + bs, n))))
                good = [(i, x) for i, x, _ in rows if x is not None]
                failures.update({i: err for i, _, err in rows if err is not None})
                if good:
                    idx = [i for i, _ in good]
                    vectors[idx] = self._embed(np.stack([x for _, x in good]))
                    ok[idx] = True
        return ImageEncodeResult(vectors=vectors, ok=ok, failures=failures)


def load_image_export(
    cache_root: Path, encoder_id: str, *, threads: int | None = None
) -> OnnxImageEncoder | None:
    """The verified ONNX copy of an image tower in this cache, or ``None``."""
    folder = export_folder(cache_root, encoder_id)
    meta = read_meta(folder, encoder_id, "image")
    return OnnxImageEncoder(folder, meta, threads=threads) if meta else None


def export_image(
    encoder: ImageEncoder, cache_root: Path, probe: Sequence[str | Path]
) -> Path | None:
    """Write a verified ONNX copy of an image tower; ``None`` when it can't be made.

    Args:
        encoder: the torch encoder (its tower is loaded if it isn't yet).
        cache_root: the embedding cache the copy goes into.
        probe: photo paths the copy must reproduce within :data:`IMAGE_TOLERANCE`;
            unreadable ones are skipped, and a synthetic photo is used when none is left.
    """
    import torch

    model, preprocess = encoder.model, encoder._loaded[1]
    recipe = image_recipe(preprocess)
    if isinstance(recipe, str):
        logger.info("no ONNX copy of %s: %s", encoder.encoder_id, recipe)
        return None
    photos: list[Image.Image] = []
    for path in probe:
        if len(photos) >= 32:
            break
        try:
            photos.append(load_photo(path, pad_to_square=encoder.config.pad_to_square))
        except UnreadableImageError:
            continue
    if not photos:
        rng = np.random.default_rng(0)
        photos = [Image.fromarray(rng.integers(0, 256, (90, 60, 3), dtype=np.uint8))]

    class _Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.model.encode_image(pixels)
            return out

    folder = export_folder(cache_root, encoder.encoder_id)
    tmp = folder.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        dummy = torch.zeros((2, 3, recipe.crop, recipe.crop), device=encoder.device)
        # With gradients on, nn.MultiheadAttention skips its fused fast path, whose
        # kernel has no ONNX form; tracing computes no gradients either way.
        with torch.inference_mode(False), torch.enable_grad(), quiet_tracing():
            torch.onnx.export(
                _Wrapped().eval(),
                (dummy,),
                str(tmp / MODEL_FILE),
                input_names=["pixels"],
                output_names=["embedding"],
                dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
                dynamo=False,
                opset_version=17,
            )
        cfg = encoder.config
        meta: dict[str, Any] = {
            "kind": "image",
            "encoder_id": encoder.encoder_id,
            "dim": encoder.dim,
            "recipe": asdict(recipe),
            "pad_to_square": cfg.pad_to_square,
            "batch_size": cfg.batch_size,
            "workers": cfg.workers,
            "model_sha256": file_digest(tmp / MODEL_FILE),
            "verified": False,
        }
        candidate = OnnxImageEncoder(tmp, meta, threads=None)
        diff = float(np.abs(candidate.encode_images(photos) - encoder.encode_images(photos)).max())
        return keep_if_verified(tmp, folder, meta, diff, IMAGE_TOLERANCE)
    except Exception as exc:  # an export failure must never fail the build that asked for it
        shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("could not export %s to ONNX (%s); torch stays in use", encoder, exc)
        return None
