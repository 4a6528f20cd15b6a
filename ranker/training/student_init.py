"""Building a distillation student from its teacher.

**Student.** A BERT-style cross-encoder with fewer layers and a narrower hidden size (2
layers x 128 by default, intermediate 4x, 2 heads) that reads the same pairs
(``[CLS] context [SEP] candidate [SEP]``) with the teacher's tokenizer and vocabulary,
under its own, tighter token budgets: a ``transformers`` BERT (``architecture="bert"``) or
the shared-context encoder of :mod:`newarrivals.ranker.shared`, which encodes the context
once per request (``architecture="shared-context"``). Its embeddings start as the
teacher's projected onto their top principal components (``init="pca"``: word embeddings
centred, position and segment embeddings through the same projection, so the input layer
starts with the teacher's lexical geometry); the transformer layers and head start
random. ``init="random"`` starts everything random.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.validation import (
    require_fraction,
    require_int,
    require_known_fields,
)
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker, TorchPairRanker
from newarrivals.ranker.student.model import SharedContextConfig, SharedContextRanker

__all__ = ["STUDENT_ARCHITECTURES", "STUDENT_INITS", "StudentConfig", "build_student"]

logger = logging.getLogger(__name__)


#: How a student's weights start (see the module docstring).
STUDENT_INITS: Final = ("pca", "random")


#: Student architectures: a plain BERT cross-encoder, or one that encodes the context once
#: per request (:mod:`newarrivals.ranker.shared`).
STUDENT_ARCHITECTURES: Final = ("bert", "shared-context")


@dataclass(frozen=True)
class StudentConfig:
    """The student's shape and what it reads.

    Args:
        hidden_size: Width of the encoder (the teacher's MiniLM is 384).
        num_layers: Encoder layers.
        num_heads: Attention heads (``hidden_size`` must divide by it).
        intermediate_size: Feed-forward width; ``None`` means ``4 * hidden_size``.
        context_tokens: Token budget of the user context.
        candidate_tokens: Token budget of a candidate's text.
        init: ``pca`` (teacher embeddings projected, needs ``hidden_size`` <= the
            teacher's) or ``random``.
        architecture: ``bert`` (a ``transformers`` BERT cross-encoder) or
            ``shared-context`` (the context encoded once per request, see
            :mod:`newarrivals.ranker.shared`).
        dropout: Dropout in the encoder while training.
        seed: Seed of the random initialisation.

    Example:
        >>> StudentConfig(hidden_size=128).intermediate_size
        512
    """

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int | None = None
    context_tokens: int = 48
    candidate_tokens: int = 24
    init: str = "pca"
    architecture: str = "bert"
    dropout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("hidden_size", self.hidden_size, minimum=4)
        require_int("num_layers", self.num_layers)
        require_int("num_heads", self.num_heads)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                f"({self.num_heads}); e.g. 128 with 2 heads."
            )
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        require_int("intermediate_size", self.intermediate_size)
        require_int("context_tokens", self.context_tokens, minimum=8)
        require_int("candidate_tokens", self.candidate_tokens, minimum=8)
        if self.init not in STUDENT_INITS:
            raise ConfigError(f"init must be one of {list(STUDENT_INITS)}, got {self.init!r}.")
        if self.architecture not in STUDENT_ARCHITECTURES:
            raise ConfigError(
                f"architecture must be one of {list(STUDENT_ARCHITECTURES)}, got "
                f"{self.architecture!r}."
            )
        require_fraction("dropout", self.dropout, below_one=True)
        require_int("seed", self.seed, minimum=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentConfig:
        require_known_fields(cls, data)
        return cls(**dict(data))


def build_student(teacher: CrossEncoderRanker, config: StudentConfig) -> TorchPairRanker:
    """A new BERT-style student reading the teacher's vocabulary (see the module docstring).

    Raises:
        ConfigError: for ``init="pca"`` with a student wider than the teacher, or token
            budgets beyond the teacher's positions.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    t_cfg: Any = teacher.torch_model.config
    t_hidden = int(t_cfg.hidden_size)
    if config.init == "pca" and config.hidden_size > t_hidden:
        raise ConfigError(
            f"init='pca' projects the teacher's {t_hidden}-wide embeddings, so hidden_size "
            f"must be <= {t_hidden}, got {config.hidden_size}; use init='random' or a "
            "narrower student."
        )
    tokenizer = teacher.tokenizer
    settings: dict[str, Any] = {
        "vocab_size": int(t_cfg.vocab_size),
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": int(config.intermediate_size or 4 * config.hidden_size),
        "max_position_embeddings": int(t_cfg.max_position_embeddings),
        "type_vocab_size": int(getattr(t_cfg, "type_vocab_size", 2)),
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
        "pad_token_id": int(tokenizer.pad_token_id),
        "num_labels": 1,
    }
    ranker_config = replace(
        teacher.config,
        num_layers=config.num_layers,
        context_tokens=config.context_tokens,
        candidate_tokens=config.candidate_tokens,
        seed=config.seed,
    )
    student: TorchPairRanker
    if config.architecture == "shared-context":
        shape = SharedContextConfig(
            vocab_size=settings["vocab_size"],
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            intermediate_size=settings["intermediate_size"],
            max_position_embeddings=settings["max_position_embeddings"],
            type_vocab_size=settings["type_vocab_size"],
            dropout=config.dropout,
            pad_token_id=settings["pad_token_id"],
        )
        student = SharedContextRanker.create(
            shape, tokenizer, ranker_config, seed=config.seed, device=teacher.device
        )
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = BertForSequenceClassification(BertConfig(**settings))
        student = CrossEncoderRanker(model, tokenizer, ranker_config, device=teacher.device)
    if config.init == "pca":
        _project_embeddings(teacher.torch_model, student.torch_model, config.hidden_size)
    arch = student.architecture
    logger.info(
        "%s student: %d layers x %d hidden (%d intermediate, %d heads), %.1fM parameters, "
        "budgets %d/%d tokens, init %s",
        config.architecture,
        arch["num_layers"],
        arch["hidden_size"],
        arch["intermediate_size"],
        arch["num_attention_heads"],
        arch["parameters"] / 1e6,
        config.context_tokens,
        config.candidate_tokens,
        config.init,
    )
    return student


def _project_embeddings(teacher: Any, student: Any, width: int) -> None:
    """Student embeddings = the teacher's on their top ``width`` principal components."""
    import torch

    # A transformers model keeps them under its base model; the shared-context one at the top.
    t_emb = getattr(teacher, "base_model", teacher).embeddings
    s_emb = getattr(student, "base_model", student).embeddings
    with torch.no_grad():
        words = t_emb.word_embeddings.weight.detach().float().cpu()
        mean = words.mean(dim=0, keepdim=True)
        # Right singular vectors of the centred vocabulary = its principal directions.
        _, _, vh = torch.linalg.svd(words - mean, full_matrices=False)
        basis = vh[:width].T.contiguous()
        s_emb.word_embeddings.weight.copy_((words - mean) @ basis)
        for name in ("position_embeddings", "token_type_embeddings"):
            source = getattr(t_emb, name, None)
            target = getattr(s_emb, name, None)
            if source is not None and target is not None:
                rows = min(source.weight.shape[0], target.weight.shape[0])
                target.weight[:rows].copy_(source.weight[:rows].detach().float().cpu() @ basis)
