"""Building the image tower's open_clip model and loading weights to start from."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.towers.image_config import (
    ARCHITECTURES,
    LOCAL_PREFIX,
    OPEN_CLIP_PREFIX,
    WEIGHTS_FILE,
    ImageTowerConfig,
)
from newarrivals.indexer.towers.pretrained import (
    IMAGENET_INIT,
    PRETRAINED_BACKBONES,
    imagenet_state_dict,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_LOGIT_SCALE",
    "MEAN",
    "STD",
    "backbone_stage",
    "init_state_dict",
    "load_matching_weights",
    "model_config",
    "new_model",
    "normalisation",
    "preprocess_config",
]

logger = logging.getLogger(__name__)

#: The saved CLIP must have a text tower; ours is a stub that is never trained or used (the
#: real text side is the frozen sentence-transformer). The full vocabulary keeps it safe to
#: tokenize with open_clip's default tokenizer.
_STUB_TEXT_CFG: Mapping[str, Any] = MappingProxyType(
    {"context_length": 4, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1}
)

# open_clip's default normalisation (OpenAI CLIP's); pretrained open_clip towers expect it.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = math.log(100.0)
_INIT_LOGIT_SCALE = math.log(1 / 0.07)


def model_config(config: ImageTowerConfig, embed_dim: int) -> dict[str, Any]:
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


def normalisation(architecture: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std: a packaged backbone's own, else open_clip's default."""
    backbone = PRETRAINED_BACKBONES.get(architecture)
    return (backbone.mean, backbone.std) if backbone is not None else (MEAN, STD)


def preprocess_config(image_size: int, architecture: str) -> dict[str, Any]:
    """open_clip's ``preprocess_cfg`` for the saved tower, matching the training cache."""
    mean, std = normalisation(architecture)
    # "shortest" + centre-crop on a photo already padded to a square is a plain resize:
    # the same bicubic resize that filled the training cache (see decode_photo).
    return {
        "size": image_size,
        "mode": "RGB",
        "mean": list(mean),
        "std": list(std),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }


def new_model(model_cfg: Mapping[str, Any], seed: int) -> Any:
    """A fresh open_clip CLIP from ``model_cfg``, seeded, with the CLIP initial temperature."""
    import open_clip
    import torch

    # A forked RNG makes the initialisation reproducible without reseeding the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**copy.deepcopy(dict(model_cfg)))
    with torch.no_grad():
        model.logit_scale.fill_(_INIT_LOGIT_SCALE)
    return model


def init_state_dict(init: str, architecture: str) -> dict[str, torch.Tensor]:
    """The tensors named by ``init`` (see :class:`ImageTowerConfig`), on the CPU."""
    from safetensors.torch import load_file

    if init == IMAGENET_INIT:
        return imagenet_state_dict(architecture)
    path_text = init[len(LOCAL_PREFIX) :] if init.startswith(LOCAL_PREFIX) else init
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
    if init.startswith(LOCAL_PREFIX):
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


def load_matching_weights(model: Any, state: dict[str, torch.Tensor], init: str) -> None:
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


def backbone_stage(name: str, n_blocks: int) -> int | None:
    """The stage of a staged (``blocks.N``) timm backbone that parameter ``name`` of the
    tower belongs to, counted from the output: 0 is the final 1x1 convolution and its norm,
    ``k`` is ``blocks.{n_blocks - k}``, ``n_blocks + 1`` the stem; ``None`` for a parameter
    outside the backbone (the projection head, the temperature)."""
    prefix = "visual.trunk."
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if rest.startswith("blocks."):
        return n_blocks - int(rest.split(".")[1])
    if rest.startswith(("conv_head.", "bn2.")):
        return 0
    return n_blocks + 1
