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

Example:
    >>> config = ImageTowerConfig(architecture="vit-micro", image_size=32, max_minutes=0.5)
    >>> report = align_images(Path("catalog"), Path("tower"), config)  # doctest: +SKIP
    >>> print(report.format())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.encoders import (
    FusionConfig,
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
    UnreadableImageError,
    l2_normalize,
    load_photo,
)
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.index.version import library_versions
from newarrivals.indexer.towers.training_loop import EpochOutcome, TimeBudget, run_epochs
from newarrivals.indexer.validation import (
    require_fraction,
    require_int,
    require_known_fields,
    require_positive,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARCHITECTURES",
    "OPEN_CLIP_PREFIX",
    "TOWER_MANIFEST",
    "ImageTowerConfig",
    "ImageTowerReport",
    "align_images",
    "image_text_recall",
    "train_image_tower",
]

logger = logging.getLogger(__name__)

TOWER_MANIFEST = "tower.json"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
#: ``architecture="open_clip:NAME"`` takes the vision tower of any open_clip model config
#: (the way to fine-tune from a pretrained open_clip tag).
OPEN_CLIP_PREFIX = "open_clip:"
_LOCAL_PREFIX = "local-dir:"
_MANIFEST_FORMAT = 1

#: open_clip ``vision_cfg`` of each named architecture (``image_size`` is set from the config).
#: The CNNs come from timm with random weights (``timm_model_pretrained`` false: nothing may
#: be downloaded); the ViTs are open_clip's own.
ARCHITECTURES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # ~1.9M parameters; ~240 train images/s at 128 px on 2 CPU cores. An empty timm_proj
        # makes timm's own head (conv_head 576->1024, then a linear classifier) the
        # projection: open_clip's "linear" proj would read 576 features where MobileNetV3's
        # head emits 1024.
        "mobilenetv3-small": {
            "timm_model_name": "mobilenetv3_small_100",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "",
        },
        "mobilenetv3-large": {
            "timm_model_name": "mobilenetv3_large_100",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "",
        },
        "convnext-atto": {
            "timm_model_name": "convnext_atto",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
        },
        "resnet18": {
            "timm_model_name": "resnet18",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
        },
        # A two-layer ViT for tests and smoke runs (trains in seconds at 32-48 px).
        "vit-micro": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "vit-tiny": {"layers": 6, "width": 192, "head_width": 64, "patch_size": 16},
        "vit-small": {"layers": 12, "width": 384, "head_width": 64, "patch_size": 16},
    }
)

#: The saved CLIP must have a text tower; ours is a stub that is never trained or used (the
#: real text side is the frozen sentence-transformer). The full vocabulary keeps it safe to
#: tokenize with open_clip's default tokenizer.
_STUB_TEXT_CFG: Mapping[str, Any] = MappingProxyType(
    {"context_length": 4, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1}
)

# open_clip's default normalisation (OpenAI CLIP's); pretrained open_clip towers expect it.
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)
_MAX_LOGIT_SCALE = math.log(100.0)
_INIT_LOGIT_SCALE = math.log(1 / 0.07)

# Mild augmentation: a product photo is a centred garment on white, so crops must keep most
# of it; colour is a product attribute, so hue never moves and saturation barely.
_CROP_SCALE = (0.65, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)
_BRIGHTNESS = 0.12
_CONTRAST = 0.12
_SATURATION = 0.08


@dataclass(frozen=True)
class ImageTowerConfig:
    """How an image tower is trained into a text encoder's space.

    Args:
        architecture: a name in :data:`ARCHITECTURES` (``mobilenetv3-small`` trains on 2 CPU
            cores in minutes; ``vit-small`` or ``resnet18`` want a GPU), or
            ``open_clip:NAME`` for the vision tower of an open_clip model config (for
            fine-tuning from one of its pretrained tags). The output dim always comes from
            the text vectors, so the tower lands in the text space.
        image_size: input side in pixels (photos are padded to a square first).
        batch_size: photos per step; also the number of in-batch negatives plus one.
        lr: peak AdamW learning rate (linear warm-up, then cosine to zero over the budget).
        weight_decay: AdamW weight decay (not applied to biases, norms or the temperature).
        max_minutes: training time budget, the main stopping rule.
        max_epochs: upper bound on passes over the training photos.
        warmup_steps: steps of linear learning-rate warm-up.
        valid_fraction: share of the products held out to pick the best checkpoint (by
            held-out Recall@10) and to report recall; 0 keeps the last checkpoint.
        valid_size: held-out product count; overrides ``valid_fraction`` when given.
        patience: stop after this many evaluations without a better held-out Recall@10;
            ``None`` trains for the whole budget.
        augment: random crop/scale, horizontal flip and mild brightness/contrast/saturation
            jitter (never hue).
        symmetric: add the text -> photo InfoNCE term to the photo -> text one.
        init: weights to start from (fine-tuning): ``local-dir:PATH`` or a tower directory,
            a ``.safetensors`` open_clip checkpoint, or an open_clip pretrained tag (with an
            ``open_clip:NAME`` architecture; needs internet). Tensors whose name and shape
            match are loaded; the projection to the text dim starts fresh when it differs.
            ``None`` trains from scratch.
        seed: seeds the initialisation, the split, the batch order and the augmentation
            (through private generators: the global torch RNG is never touched).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        workers: threads decoding photos into the in-memory cache.

    Example:
        >>> ImageTowerConfig(architecture="vit-micro", image_size=32).image_size
        32
    """

    architecture: str = "mobilenetv3-small"
    image_size: int = 128
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    max_minutes: float = 10.0
    max_epochs: int = 1000
    warmup_steps: int = 50
    valid_fraction: float = 0.1
    valid_size: int | None = None
    patience: int | None = None
    augment: bool = True
    symmetric: bool = True
    init: str | None = None
    seed: int = 0
    device: str = "auto"
    workers: int = 2

    def __post_init__(self) -> None:
        if self.architecture.startswith(OPEN_CLIP_PREFIX):
            name = self.architecture[len(OPEN_CLIP_PREFIX) :]
            import open_clip

            if name not in open_clip.list_models():
                raise ConfigError(
                    f"architecture {self.architecture!r}: open_clip has no model config "
                    f"{name!r}; see open_clip.list_models(), or use one of "
                    f"{', '.join(ARCHITECTURES)}."
                )
        elif self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"unknown architecture {self.architecture!r}; choose one of "
                f"{', '.join(ARCHITECTURES)}, or {OPEN_CLIP_PREFIX}NAME for an open_clip "
                "model config."
            )
        for name in ("image_size", "batch_size", "max_epochs", "workers"):
            require_int(name, getattr(self, name))
        if self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16 pixels, got {self.image_size}.")
        if self.batch_size < 2:
            raise ConfigError(
                f"batch_size must be at least 2 (InfoNCE needs in-batch negatives), "
                f"got {self.batch_size}."
            )
        for name in ("lr", "max_minutes"):
            require_positive(name, getattr(self, name))
        if not (
            isinstance(self.weight_decay, int | float)
            and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0
        ):
            raise ConfigError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}."
            )
        if isinstance(self.warmup_steps, bool) or not (
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0
        ):
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}.")
        require_fraction("valid_fraction", self.valid_fraction, below_one=True)
        if self.valid_size is not None:
            require_int("valid_size", self.valid_size)
        if self.patience is not None:
            require_int("patience", self.patience)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.init is not None:
            self._check_init(self.init)

    def _check_init(self, init: str) -> None:
        if not init.strip():
            raise ConfigError("init must name weights to start from, or be None; got ''.")
        if init.startswith(_LOCAL_PREFIX) or Path(init).is_dir():
            return
        suffix = Path(init).suffix.lower()
        if suffix == ".safetensors":
            return
        if suffix in (".pt", ".pth", ".bin", ".ckpt"):
            raise ConfigError(
                f"init={init!r} is a pickled checkpoint, which this project never loads; "
                "convert it to .safetensors (safetensors.torch.save_file) or pass a tower "
                "directory."
            )
        if not self.architecture.startswith(OPEN_CLIP_PREFIX):
            raise ConfigError(
                f"init={init!r} is not a directory or .safetensors file, so it would be an "
                f"open_clip pretrained tag, but architecture {self.architecture!r} has no "
                f"pretrained tags; use architecture='{OPEN_CLIP_PREFIX}NAME' (e.g. "
                f"'{OPEN_CLIP_PREFIX}ViT-B-32') or a local checkpoint."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageTowerConfig:
        require_known_fields(cls, data)
        return cls(**data)


@dataclass(frozen=True)
class ImageTowerReport:
    """What a training run did and how well the tower matches photos to their text.

    Recall dicts map ``"R@1"``/``"R@10"`` to the share of held-out photos whose own text is
    in the top k among the held-out texts (empty when nothing was held out).
    ``valid_untrained`` is the same architecture at its random initialisation;
    ``valid_initial`` is the tower training started from (equal to ``valid_untrained``
    unless ``init`` was given). ``test_*`` is a second held-out set that played no part in
    choosing the checkpoint (e.g. products launched after a cutoff).
    """

    out_dir: Path
    architecture: str
    embed_dim: int
    image_size: int
    device: str
    n_train: int
    n_valid: int
    n_test: int
    photo_failures: int
    epochs: float
    steps: int
    best_epoch: int
    train_seconds: float
    images_per_second: float
    valid_trained: dict[str, float]
    valid_untrained: dict[str, float]
    valid_initial: dict[str, float]
    test_trained: dict[str, float] = field(default_factory=dict)
    test_untrained: dict[str, float] = field(default_factory=dict)
    photo_only: int = 0
    photo_only_embedded: int = 0
    launched_before: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d

    def format(self) -> str:
        def fmt(r: Mapping[str, float]) -> str:
            return "  ".join(f"{k} {v:.3f}" for k, v in r.items()) if r else "-"

        lines = [
            f"image tower: {self.out_dir}",
            f"architecture {self.architecture} at {self.image_size}px -> {self.embed_dim} dims "
            f"on {self.device}",
            f"products: train {self.n_train}  held out {self.n_valid}  test {self.n_test}  "
            f"unreadable photos {self.photo_failures}"
            + (
                f"  (trained on launched before {self.launched_before})"
                if self.launched_before
                else ""
            ),
            f"trained {self.train_seconds / 60:.1f} min, {self.epochs:.1f} epochs, "
            f"{self.steps} steps, {self.images_per_second:.0f} images/s; best epoch "
            f"{self.best_epoch}",
            f"held-out image->text (among {self.n_valid}): trained {fmt(self.valid_trained)} | "
            f"untrained {fmt(self.valid_untrained)}",
        ]
        if self.valid_initial != self.valid_untrained:
            lines.append(f"  start of fine-tuning: {fmt(self.valid_initial)}")
        if self.n_test:
            lines.append(
                f"test image->text (among {self.n_test}): trained {fmt(self.test_trained)} | "
                f"untrained {fmt(self.test_untrained)}"
            )
        if self.photo_only:
            lines.append(
                f"photo-only products (no text): {self.photo_only_embedded} of "
                f"{self.photo_only} embedded in the text space"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def image_text_recall(
    image_vectors: np.ndarray, text_vectors: np.ndarray, ks: Sequence[int] = (1, 10)
) -> dict[str, float]:
    """Image -> text retrieval recall: row ``i``'s own text is ``text_vectors[i]``.

    Each image ranks all the texts by cosine; recall@k is the share of images whose own text
    ranks in the top k. A text scoring exactly as high as the own text (a duplicate text)
    does not push it down, so products sharing one description are not counted as misses.

    Args:
        image_vectors: ``(n, d)`` unit vectors.
        text_vectors: ``(n, d)`` unit vectors, row-aligned with ``image_vectors``.
        ks: cut-offs.

    Returns:
        ``{"R@1": ..., "R@10": ...}``; empty for zero rows.

    Example:
        >>> eye = np.eye(3, dtype=np.float32)
        >>> image_text_recall(eye, eye, ks=(1,))
        {'R@1': 1.0}
    """
    if image_vectors.shape != text_vectors.shape:
        raise ValueError(
            f"image and text vectors must be row-aligned with one shape; got "
            f"{image_vectors.shape} and {text_vectors.shape}."
        )
    n = image_vectors.shape[0]
    if n == 0:
        return {}
    img = image_vectors.astype(np.float32, copy=False)
    txt = text_vectors.astype(np.float32, copy=False)
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, 1024):  # bounded memory for big held-out sets
        scores = img[start : start + 1024] @ txt.T
        own = scores[np.arange(scores.shape[0]), np.arange(start, start + scores.shape[0])]
        ranks[start : start + scores.shape[0]] = (scores > own[:, None]).sum(axis=1)
    return {f"R@{k}": float((ranks < k).mean()) for k in ks}


# --------------------------------------------------------------------------------------
# Model construction and weights
# --------------------------------------------------------------------------------------


def _model_cfg(config: ImageTowerConfig, embed_dim: int) -> dict[str, Any]:
    """The open_clip ``model_cfg`` of the tower: chosen vision tower, stub text tower."""
    extra: dict[str, Any] = {}
    if config.architecture.startswith(OPEN_CLIP_PREFIX):
        import open_clip

        base = open_clip.get_model_config(config.architecture[len(OPEN_CLIP_PREFIX) :])
        vision = copy.deepcopy(base["vision_cfg"])
        if base.get("quick_gelu"):
            extra["quick_gelu"] = True
    else:
        vision = copy.deepcopy(dict(ARCHITECTURES[config.architecture]))
    vision["image_size"] = config.image_size
    return {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": dict(_STUB_TEXT_CFG), **extra}


def _preprocess_cfg(image_size: int) -> dict[str, Any]:
    # "shortest" + centre-crop on a photo already padded to a square is a plain resize:
    # the same bicubic resize that filled the training cache (see _decode_one).
    return {
        "size": image_size,
        "mode": "RGB",
        "mean": list(_MEAN),
        "std": list(_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }


def _new_model(model_cfg: Mapping[str, Any], seed: int) -> Any:
    import open_clip
    import torch

    # A forked RNG makes the initialisation reproducible without reseeding the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**copy.deepcopy(dict(model_cfg)))
    with torch.no_grad():
        model.logit_scale.fill_(_INIT_LOGIT_SCALE)
    return model


def _init_state_dict(init: str, architecture: str) -> dict[str, torch.Tensor]:
    """The tensors named by ``init`` (see :class:`ImageTowerConfig`), on the CPU."""
    from safetensors.torch import load_file

    path_text = init[len(_LOCAL_PREFIX) :] if init.startswith(_LOCAL_PREFIX) else init
    path = Path(path_text)
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise ConfigError(
                f"init directory {path} has no {WEIGHTS_FILE}; point init at a tower saved by "
                "align-images or an open_clip local-dir."
            )
        return load_file(str(weights))
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise ConfigError(f"init checkpoint {path} does not exist.")
        # Checkpoints saved from DistributedDataParallel prefix every name.
        return {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}
    if init.startswith(_LOCAL_PREFIX):
        raise ConfigError(f"init {init!r}: directory {path} does not exist.")
    import open_clip

    name = architecture[len(OPEN_CLIP_PREFIX) :]
    logger.info("fetching open_clip %s pretrained=%s (downloads unless cached)", name, init)
    try:
        pretrained = open_clip.create_model(name, pretrained=init, device="cpu")
    except RuntimeError as exc:
        raise ConfigError(
            f"open_clip could not load {name!r} with pretrained tag {init!r}: {exc}. Without "
            "internet, pass a local .safetensors checkpoint or tower directory as init."
        ) from exc
    state: dict[str, torch.Tensor] = pretrained.state_dict()
    return state


def _load_matching(model: Any, state: dict[str, torch.Tensor], init: str) -> None:
    """Load the visual tensors (and temperature) whose names and shapes match."""
    import open_clip.model

    state = dict(state)
    # A ViT checkpoint trained at another resolution: interpolate its position grid.
    open_clip.model.resize_pos_embed(state, model)
    own = model.state_dict()
    wanted = [k for k in own if k.startswith("visual.") or k == "logit_scale"]
    loadable = {k: state[k] for k in wanted if k in state and state[k].shape == own[k].shape}
    skipped = [k for k in wanted if k not in loadable]
    n_visual = sum(1 for k in loadable if k.startswith("visual."))
    if n_visual == 0:
        raise ConfigError(
            f"init {init!r} has no visual tensor matching the architecture's by name and "
            "shape; was it trained with another architecture?"
        )
    model.load_state_dict(loadable, strict=False)
    logger.info(
        "init %s: loaded %d tensors, %d start fresh%s",
        init,
        len(loadable),
        len(skipped),
        f" ({', '.join(skipped[:5])}{'...' if len(skipped) > 5 else ''})" if skipped else "",
    )


# --------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------


def _decode_one(path: str, size: int) -> np.ndarray:
    img = load_photo(path, pad_to_square=True)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _decode_photos(
    paths: Sequence[str], size: int, workers: int, progress: bool
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode photos to ``(n, size, size, 3)`` uint8 (zero where unreadable) and failures."""
    from tqdm.auto import tqdm

    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    failures: dict[int, str] = {}

    def work(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, _decode_one(paths[i], size), None
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


class _Batches:
    """Turns rows of the uint8 photo cache into normalised (and augmented) model input."""

    def __init__(
        self,
        photos: torch.Tensor,
        device: str,
        *,
        channels_last: bool,
        generator: torch.Generator,
    ) -> None:
        import torch

        self.photos = photos  # (n, 3, s, s) uint8, CPU
        self.device = device
        self.channels_last = channels_last
        self.generator = generator
        self.mean = torch.tensor(_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(_STD, device=device).view(1, 3, 1, 1)

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


def _embed(model: Any, batches: _Batches, rows: np.ndarray, batch_size: int) -> np.ndarray:
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


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def _select_rows(products: Sequence[Product], text_vectors: np.ndarray | None) -> list[int]:
    """Rows with a photo and real text (a text row of zeros means no text)."""
    rows = []
    for i, p in enumerate(products):
        if not (p.has_image and p.has_text):
            continue
        if text_vectors is not None and not np.any(text_vectors[i]):
            continue
        rows.append(i)
    return rows


def _check_text_vectors(products: Sequence[Product], text_vectors: np.ndarray, what: str) -> None:
    if text_vectors.ndim != 2 or text_vectors.shape[0] != len(products):
        raise ConfigError(
            f"{what} must be a (n_products, dim) array with one row per product; got shape "
            f"{text_vectors.shape} for {len(products)} products."
        )


def _text_groups(text_vectors: np.ndarray) -> np.ndarray:
    """An id per distinct text vector: products sharing a text are not negatives of each
    other (H&M colour variants often borrow one description)."""
    _, inverse = np.unique(text_vectors, axis=0, return_inverse=True)
    return np.asarray(inverse, dtype=np.int64).reshape(-1)


def _lr_at(config: ImageTowerConfig, step: int, progress: float) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Visual parameters and the temperature; no decay on biases, norms and the scale."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not (name.startswith("visual.") or name == "logit_scale"):
            p.requires_grad_(False)  # the stub text tower never trains
            continue
        (no_decay if p.ndim < 2 or name == "logit_scale" else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a directory that holds something other than a tower."""
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / TOWER_MANIFEST).is_file()
    ):
        raise ConfigError(
            f"out_dir {out_dir} exists and is not an image tower (no {TOWER_MANIFEST}); "
            "choose an empty or new directory."
        )


@contextmanager
def _atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir``; on success it replaces ``out_dir``."""
    out_dir = out_dir.resolve()
    _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.replace(old)
        tmp.replace(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def train_image_tower(
    products: Sequence[Product],
    text_vectors: np.ndarray,
    config: ImageTowerConfig,
    out_dir: Path,
    *,
    test_products: Sequence[Product] = (),
    test_text_vectors: np.ndarray | None = None,
    launched_before: datetime | None = None,
    progress: bool = True,
) -> ImageTowerReport:
    """Train an image tower so each product's photo lands near its text; save it.

    Trains on the products with both a photo and text (``text_vectors[i]`` belongs to
    ``products[i]``; rows of products without text are ignored), holds out
    ``valid_fraction`` (or ``valid_size``) of them to keep the best checkpoint, and writes
    the tower to ``out_dir`` atomically (see the module docstring for the layout).

    Args:
        products: the catalogue's products (photos are read from ``product.image``).
        text_vectors: ``(len(products), dim)`` unit vectors of the frozen text encoder;
            ``dim`` becomes the tower's output dim.
        config: training settings.
        out_dir: where the tower goes (replaced if it is an earlier tower).
        test_products: optional second held-out set, only measured (never trained on, never
            used to pick the checkpoint).
        test_text_vectors: text vectors of ``test_products``, row-aligned.
        launched_before: only recorded in the report: the launch cutoff the caller used to
            choose ``products`` (see :func:`align_images`).
        progress: show progress bars.

    Returns:
        The report also written to ``tower.json``.

    Raises:
        ConfigError: bad shapes, an unusable ``init``, or an unwritable ``out_dir``.
        CatalogError: fewer than two products with a readable photo and text.
    """
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from newarrivals.indexer.device import resolve_device

    _check_text_vectors(products, text_vectors, "text_vectors")
    if test_text_vectors is not None:
        _check_text_vectors(test_products, test_text_vectors, "test_text_vectors")
    elif test_products:
        raise ConfigError("test_products were given without test_text_vectors.")
    _check_out_dir(out_dir)
    device = resolve_device(config.device)
    embed_dim = int(text_vectors.shape[1])
    # Models first: a bad init fails before minutes of photo decoding.
    model_cfg = _model_cfg(config, embed_dim)
    channels_last = "timm_model_name" in model_cfg["vision_cfg"]
    untrained = _new_model(model_cfg, config.seed)
    model = untrained
    if config.init is not None:
        model = copy.deepcopy(untrained)
        _load_matching(model, _init_state_dict(config.init, config.architecture), config.init)
    text_all = l2_normalize(np.asarray(text_vectors, dtype=np.float32))

    rows = _select_rows(products, text_all)
    test_rows = (
        _select_rows(test_products, test_text_vectors) if test_text_vectors is not None else []
    )
    paths = [str(products[i].image) for i in rows] + [
        str(test_products[i].image) for i in test_rows
    ]
    logger.info(
        "decoding %d photos at %dpx (%d train/valid, %d test)",
        len(paths),
        config.image_size,
        len(rows),
        len(test_rows),
    )
    t_decode = time.perf_counter()
    photos_np, failures = _decode_photos(paths, config.image_size, config.workers, progress)
    logger.info("decoded in %.1fs; %d unreadable", time.perf_counter() - t_decode, len(failures))
    ok = np.array([i not in failures for i in range(len(paths))], dtype=bool)
    n_main = len(rows)
    main_cache = np.flatnonzero(ok[:n_main])
    test_cache = n_main + np.flatnonzero(ok[n_main:])
    if len(main_cache) < 2:
        raise CatalogError(
            f"need at least 2 products with both a readable photo and text to train an image "
            f"tower; found {len(main_cache)}."
        )
    texts_main = text_all[np.asarray(rows, dtype=np.int64)[ok[:n_main]]]
    texts_test = (
        l2_normalize(np.asarray(test_text_vectors, dtype=np.float32))[
            np.asarray(test_rows, dtype=np.int64)[ok[n_main:]]
        ]
        if test_text_vectors is not None and len(test_cache)
        else np.zeros((0, embed_dim), dtype=np.float32)
    )

    # Split: a seeded permutation of the usable products.
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(main_cache))
    n_valid = (
        config.valid_size
        if config.valid_size is not None
        else round(config.valid_fraction * len(main_cache))
    )
    n_valid = min(n_valid, len(main_cache) - 2)
    valid_pos, train_pos = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    train_cache, valid_cache = main_cache[train_pos], main_cache[valid_pos]
    texts_train, texts_valid = texts_main[train_pos], texts_main[valid_pos]
    groups_train = torch.from_numpy(_text_groups(texts_train))

    photos = torch.from_numpy(photos_np).permute(0, 3, 1, 2).contiguous()  # (n, 3, s, s)
    del photos_np
    generator = torch.Generator().manual_seed(config.seed)
    batches = _Batches(photos, device, channels_last=channels_last, generator=generator)
    eval_bs = max(config.batch_size, 256)

    def recall(model: Any, cache_rows: np.ndarray, texts: np.ndarray) -> dict[str, float]:
        if len(cache_rows) == 0:
            return {}
        return image_text_recall(_embed(model, batches, cache_rows, eval_bs), texts)

    def prepare(model: Any) -> Any:
        model = model.to(device)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    untrained = prepare(untrained)
    valid_untrained = recall(untrained, valid_cache, texts_valid)
    test_untrained = recall(untrained, test_cache, texts_test)
    if config.init is not None:
        model = prepare(model)
        valid_initial = recall(model, valid_cache, texts_valid)
        del untrained
    else:
        model, valid_initial = untrained, valid_untrained
    logger.info(
        "held out %d of %d products; untrained %s, start %s",
        len(valid_cache),
        len(main_cache),
        valid_untrained,
        valid_initial,
    )

    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    text_dev = torch.from_numpy(texts_train).to(device)
    n_train = len(train_cache)
    bs = min(config.batch_size, n_train)
    # A last batch of one has no negative: drop it (its photo comes up again next epoch).
    steps_per_epoch = math.ceil(n_train / bs) if n_train % bs != 1 else n_train // bs
    total_steps = steps_per_epoch * config.max_epochs

    step, seen, step_seconds = 0, 0, 0.0
    model.train()
    bar = tqdm(total=None, desc="align", unit="step", disable=not progress)

    def run_epoch(epoch: int, budget: TimeBudget) -> EpochOutcome[None]:
        nonlocal step, seen, step_seconds
        perm = torch.randperm(n_train, generator=generator)
        for b in range(steps_per_epoch):
            if budget.expired():
                break
            t_step = time.perf_counter()
            lr = _lr_at(config, step, max(budget.fraction(), step / total_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            pos = perm[b * bs : (b + 1) * bs]
            x = (
                batches.augmented(torch.from_numpy(train_cache)[pos])
                if config.augment
                else (batches.plain(torch.from_numpy(train_cache)[pos]))
            )
            feats = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
            logits = model.logit_scale.exp() * feats @ text_dev[pos].T
            g = groups_train[pos].to(device)
            same = (g[:, None] == g[None, :]).float()
            target = same / same.sum(dim=1, keepdim=True)
            loss = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
            if config.symmetric:
                loss = 0.5 * (loss - (target * logits.T.log_softmax(dim=1)).sum(dim=1).mean())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, _MAX_LOGIT_SCALE)
            step += 1
            seen += int(pos.shape[0])
            step_seconds += time.perf_counter() - t_step
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(
                    epoch=epoch, loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp():.1f}"
                )
        if not len(valid_cache):
            return EpochOutcome(record=None, score=None)
        r = recall(model, valid_cache, texts_valid)
        logger.info("epoch %d (%.0fs): held-out %s", epoch, budget.elapsed(), r)
        return EpochOutcome(record=None, score=r["R@10"])

    budget = TimeBudget(config.max_minutes)
    run = run_epochs(
        model,
        run_epoch,
        max_epochs=config.max_epochs,
        budget=budget,
        patience=config.patience,
        initial_score=valid_initial.get("R@10", -math.inf),
        # Snapshots on the CPU leave the accelerator's memory to training.
        snapshot_device="cpu",
        score_name="held-out Recall@10",
    )
    bar.close()
    train_seconds = budget.elapsed()
    valid_trained = recall(model, valid_cache, texts_valid)
    test_trained = recall(model, test_cache, texts_test)

    report = ImageTowerReport(
        out_dir=out_dir,
        architecture=config.architecture,
        embed_dim=embed_dim,
        image_size=config.image_size,
        device=device,
        n_train=n_train,
        n_valid=len(valid_cache),
        n_test=len(test_cache),
        photo_failures=len(failures),
        epochs=round(seen / n_train, 2),
        steps=step,
        best_epoch=run.best_epoch,
        train_seconds=round(train_seconds, 1),
        # Throughput of the training steps alone (the held-out evaluations are excluded).
        images_per_second=round(seen / step_seconds, 1) if step_seconds > 0 else 0.0,
        valid_trained=valid_trained,
        valid_untrained=valid_untrained,
        valid_initial=valid_initial,
        test_trained=test_trained,
        test_untrained=test_untrained,
        launched_before=launched_before.isoformat() if launched_before else None,
    )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with _atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(
            json.dumps(
                {"model_cfg": model_cfg, "preprocess_cfg": _preprocess_cfg(config.image_size)},
                indent=2,
            )
        )
        main_ids = [products[rows[c]].product_id for c in range(n_main)]
        _write_manifest(
            tmp,
            config,
            model_cfg,
            report,
            # Which products were held out, so an evaluation can stay off them.
            held_out={
                "valid": [main_ids[c] for c in valid_cache.tolist()],
                "test": [
                    test_products[test_rows[c - n_main]].product_id for c in test_cache.tolist()
                ],
            },
        )
    logger.info("image tower saved to %s", out_dir)
    return report


def _write_manifest(
    directory: Path,
    config: ImageTowerConfig,
    model_cfg: Mapping[str, Any],
    report: ImageTowerReport,
    held_out: Mapping[str, list[str]],
) -> None:
    manifest = {
        "format": _MANIFEST_FORMAT,
        "kind": "newarrivals-image-tower",
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "model_cfg": model_cfg,
        "libraries": library_versions(),
        "report": {k: v for k, v in report.to_dict().items() if k != "out_dir"},
        "held_out_product_ids": dict(held_out),
    }
    (directory / TOWER_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


# --------------------------------------------------------------------------------------
# Catalogue -> tower
# --------------------------------------------------------------------------------------


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
    from newarrivals.indexer.index.build import encode_products

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
        encoder = ImageEncoder(ImageEncoderConfig(model=f"{_LOCAL_PREFIX}{out_dir}"), device)
        result = encoder.encode_paths([str(p.image) for p in photo_only])
        norms = np.linalg.norm(result.vectors, axis=1)
        good = result.ok & (np.abs(norms - 1.0) < 1e-3) & (result.vectors.shape[1] == text.shape[1])
        embedded = int(good.sum())
    return replace(report, photo_only=len(photo_only), photo_only_embedded=embedded)
