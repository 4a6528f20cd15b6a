"""The image tower's training schedule: which parameters train when, at which learning
rate. A pretrained backbone first stays frozen while a fresh projection head learns (its
large early gradients would otherwise wreck the pretrained features), then its top stages
train too, at a smaller learning rate."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from newarrivals.indexer.towers.image_config import ImageTowerConfig
from newarrivals.indexer.towers.image_model import backbone_stage

if TYPE_CHECKING:
    import torch

__all__ = ["FreezeSchedule", "is_head", "param_groups"]

logger = logging.getLogger(__name__)


def is_head(name: str) -> bool:
    """The projection into the text space and the temperature: never frozen."""
    return name == "logit_scale" or name == "visual.proj" or name.startswith("visual.head.")


def param_groups(model: Any, weight_decay: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Visual parameters and the temperature, in groups by learning-rate scale (backbone or
    head) and decay (none on biases, norms and the scale). The stub text tower is frozen."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not (name.startswith("visual.") or name == "logit_scale"):
            p.requires_grad_(False)  # the stub text tower never trains
            continue
        decays = p.ndim >= 2 and name != "logit_scale"
        groups.setdefault((is_head(name), decays), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": 1.0 if head else backbone_lr_scale,
        }
        for (head, decays), params in sorted(groups.items())
    ]


class FreezeSchedule:
    """Which backbone parameters train when: only the head during the first
    ``head_only_fraction`` of the run, then also the top ``train_top_blocks`` stages."""

    def __init__(self, model: Any, config: ImageTowerConfig) -> None:
        self.model = model
        self.config = config
        trunk = getattr(model.visual, "trunk", None)
        blocks = getattr(trunk, "blocks", None)
        self.n_blocks = len(blocks) if blocks is not None else 0
        self.head_only: bool | None = None

    def _trains(self, name: str, head_only: bool) -> bool:
        if is_head(name):
            return True
        if head_only:
            return False
        top = self.config.train_top_blocks
        if top is None or not self.n_blocks:
            return True
        stage = backbone_stage(name, self.n_blocks)
        return stage is None or stage < top

    def update(self, progress: float) -> None:
        """Freeze or unfreeze for the run's progress (a share of the budget or epochs)."""
        head_only = progress < (self.config.head_only_fraction or 0.0)
        if head_only == self.head_only:
            return
        self.head_only = head_only
        n_training = 0
        for name, p in self.model.named_parameters():
            if name.startswith("visual.") or name == "logit_scale":
                p.requires_grad_(self._trains(name, head_only))
                n_training += int(p.requires_grad)
        self.freeze_norms()
        logger.info(
            "%s: %d parameter tensors train",
            "head only" if head_only else "head and backbone",
            n_training,
        )

    def freeze_norms(self) -> None:
        """Frozen layers' batch norms keep their (pretrained) running statistics."""
        import torch

        for module in self.model.visual.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
