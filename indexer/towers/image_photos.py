"""Photos for the image tower: decoded once into an in-memory ``uint8`` cache, then served
as normalised (and augmented) batches and embedded in eval mode."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from newarrivals.indexer.encoders import (
    UnreadableImageError,
    l2_normalize,
    load_photo,
)
from newarrivals.indexer.towers.image_model import MEAN, STD

if TYPE_CHECKING:
    import torch

__all__ = ["PhotoBatches", "decode_photo", "decode_photos", "embed_photos"]

# Mild augmentation: a product photo is a centred garment on white, so crops must keep most
# of it; colour is a product attribute, so hue never moves and saturation barely.
_CROP_SCALE = (0.65, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)
_BRIGHTNESS = 0.12
_CONTRAST = 0.12
_SATURATION = 0.08


def decode_photo(path: str, size: int) -> np.ndarray:
    """One photo padded to a square and resized to ``size``, as ``(size, size, 3)`` uint8."""
    img = load_photo(path, pad_to_square=True)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def decode_photos(
    paths: Sequence[str], size: int, workers: int, progress: bool
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode photos to ``(n, size, size, 3)`` uint8 (zero where unreadable) and failures."""
    from tqdm.auto import tqdm

    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    failures: dict[int, str] = {}

    def work(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, decode_photo(paths[i], size), None
        except UnreadableImageError as exc:
            return i, None, str(exc)

    # PIL decodes and resizes with the GIL released, so threads use every core.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        bar = tqdm(total=len(paths), desc="photos", unit="img", disable=not progress)
        for i, arr, err in pool.map(work, range(len(paths))):
            if arr is not None:
                out[i] = arr
            else:
                failures[i] = str(err)
            bar.update(1)
        bar.close()
    return out, failures


class PhotoBatches:
    """Turns rows of the uint8 photo cache into normalised (and augmented) model input."""

    def __init__(
        self,
        photos: torch.Tensor,
        device: str,
        *,
        channels_last: bool,
        generator: torch.Generator,
        mean: tuple[float, ...] = MEAN,
        std: tuple[float, ...] = STD,
    ) -> None:
        import torch

        self.photos = photos  # (n, 3, s, s) uint8, CPU
        self.device = device
        self.channels_last = channels_last
        self.generator = generator
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def plain(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.photos[rows].to(self.device, non_blocking=True).float().div_(255.0)
        return self._finish(x)

    def augmented(self, rows: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as nnf

        b = int(rows.shape[0])
        g = self.generator

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(b, generator=g) * (hi - lo) + lo

        # Random resized crop + flip as one affine resample per image. ``theta`` maps output
        # coordinates (-1..1) to input coordinates: a crop of width w centred at cx is
        # x_in = w * x_out + cx; a flip negates w.
        area = uniform(*_CROP_SCALE)
        log_ratio = uniform(math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1]))
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        bright = uniform(1 - _BRIGHTNESS, 1 + _BRIGHTNESS).view(b, 1, 1, 1)
        contrast = uniform(1 - _CONTRAST, 1 + _CONTRAST).view(b, 1, 1, 1)
        sat = uniform(1 - _SATURATION, 1 + _SATURATION).view(b, 1, 1, 1)

        x = self.photos[rows].to(self.device, non_blocking=True).float().div_(255.0)
        grid = nnf.affine_grid(theta.to(self.device), list(x.shape), align_corners=False)
        x = nnf.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = x * bright.to(self.device)
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)
        mean_grey = grey.mean(dim=(2, 3), keepdim=True)
        x = (x - mean_grey) * contrast.to(self.device) + mean_grey
        x = (x - grey) * sat.to(self.device) + grey
        return self._finish(x.clamp_(0.0, 1.0))


def embed_photos(
    model: Any, batches: PhotoBatches, rows: np.ndarray, batch_size: int
) -> np.ndarray:
    """Unit image vectors for cache rows, in eval mode (what serving will compute)."""
    import torch

    was_training = bool(model.training)
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            idx = torch.from_numpy(rows[start : start + batch_size])
            feats = model.encode_image(batches.plain(idx))
            out.append(feats.float().cpu().numpy())
    model.train(was_training)
    dim = int(model.visual.output_dim) if hasattr(model.visual, "output_dim") else 0
    return l2_normalize(np.concatenate(out)) if out else np.zeros((0, dim), dtype=np.float32)
