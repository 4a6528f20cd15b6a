"""The user tower's settings and artifact constants."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from newarrivals.indexer.catalog.schema import EventType
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.retrieval.users import DEFAULT_EVENT_WEIGHTS, UserVectorConfig
from newarrivals.indexer.validation import (
    require_flag,
    require_fraction,
    require_int,
    require_known_fields,
    require_positive,
)

__all__ = [
    "EVENT_CODE",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MODELS",
    "N_EVENT_CODES",
    "TEMPERATURE_RANGE",
    "WEIGHTS_FILE",
    "UserTowerConfig",
]

MANIFEST_FILE: Final = "user_tower.json"
WEIGHTS_FILE: Final = "user_tower.safetensors"
FORMAT: Final = "newarrivals-user-tower"
FORMAT_VERSION: Final = 1
MODELS: Final = ("gru", "transformer")

# Event codes: 0 is padding, then the event types in their declared (weakest-first) order.
EVENT_CODE: Final = {e: i + 1 for i, e in enumerate(EventType)}
N_EVENT_CODES: Final = len(EventType) + 1
#: The range the (learnt or calibrated) softmax temperature is kept in.
TEMPERATURE_RANGE: Final = (0.005, 2.0)


@dataclass(frozen=True)
class UserTowerConfig:
    """Architecture and training settings of the user tower; recorded in its manifest.

    Args:
        max_history: The most recent events (on indexed products) the tower reads.
        model: ``"gru"`` or ``"transformer"``.
        hidden_size: Width of the sequence model.
        num_layers: Stacked GRU / transformer layers.
        num_heads: Attention heads (transformer only; must divide ``hidden_size``).
        dropout: Dropout in the sequence model and head, in [0, 1).
        learn_mean_weights: Learn the baseline mean's event weights and half-life (they
            start at ``event_weights`` and ``half_life_days``).
        event_weights: Initial per-event weights of the mean (as in ``UserVectorConfig``).
        half_life_days: Initial half-life of the mean's recency decay.
        target_events: Event types that count as a "next product" to predict.
        exclude_seen_targets: Skip targets whose product is already in the history.
        batch_size: Examples per step; also the number of in-batch negatives + 1 (>= 2).
        random_negatives: Extra negatives per step drawn uniformly from all products.
        logq_correction: Subtract each sampled product's log expected count from its
            logit, so in-batch sampling (by popularity) does not teach "avoid the popular".
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        epochs: Maximum passes over the training examples.
        max_minutes: Stop training after this many minutes (``None``: no limit).
        patience: Stop after this many epochs without a better validation recall.
        temperature: Softmax temperature (initial value when ``learn_temperature``);
            ``None`` calibrates it: the grid value that minimises the untrained tower's
            (the baseline's) loss on the first training batches. A badly scaled start is
            costly: at too low a temperature the cheapest way down the loss is to blur
            every user towards the catalogue mean, which hurts ranking.
        learn_temperature: Learn the temperature (clamped to [0.005, 2]).
        valid_fraction: Share of users held out for early stopping, in [0, 1); 0 trains
            every epoch and keeps the last one.
        valid_k: Cut-off of the validation recall.
        max_valid_examples: Cap on validation targets (a seeded sample beyond it).
        seed: Seed of the user split, shuffling, initialisation, dropout and negatives.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (resolved once, when training).

    Example:
        >>> UserTowerConfig(max_history=20, epochs=5).baseline_config.half_life_days
        30.0
    """

    max_history: int = 50
    model: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    num_heads: int = 4
    dropout: float = 0.1
    learn_mean_weights: bool = True
    event_weights: Mapping[EventType, float] = field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS)
    )
    half_life_days: float = 30.0
    target_events: tuple[EventType, ...] = tuple(EventType)
    exclude_seen_targets: bool = True
    batch_size: int = 256
    random_negatives: int = 256
    logq_correction: bool = True
    lr: float = 2e-3
    weight_decay: float = 1e-4
    epochs: int = 20
    max_minutes: float | None = None
    patience: int = 3
    temperature: float | None = None
    learn_temperature: bool = True
    valid_fraction: float = 0.1
    valid_k: int = 10
    max_valid_examples: int = 5000
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_history", "hidden_size", "num_layers", "num_heads", "epochs"):
            require_int(name, getattr(self, name))
        for name in ("patience", "valid_k", "max_valid_examples"):
            require_int(name, getattr(self, name))
        require_int("batch_size", self.batch_size, minimum=2)
        require_int("random_negatives", self.random_negatives, minimum=0)
        require_int("seed", self.seed, minimum=0)
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {list(MODELS)}, got {self.model!r}.")
        if self.model == "transformer" and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads}) for the transformer."
            )
        require_fraction("dropout", self.dropout, below_one=True)
        require_fraction("valid_fraction", self.valid_fraction, below_one=True)
        for name in ("lr", "half_life_days"):
            require_positive(name, getattr(self, name))
        if (
            isinstance(self.weight_decay, bool)
            or not isinstance(self.weight_decay, int | float)
            or not (math.isfinite(self.weight_decay) and self.weight_decay >= 0)
        ):
            raise ConfigError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}."
            )
        if self.max_minutes is not None:
            require_positive("max_minutes", self.max_minutes)
        low, high = TEMPERATURE_RANGE
        if self.temperature is not None and not (
            isinstance(self.temperature, int | float)
            and not isinstance(self.temperature, bool)
            and low <= self.temperature <= high
        ):
            raise ConfigError(f"temperature must be in [{low}, {high}], got {self.temperature}.")
        for name in (
            "learn_mean_weights",
            "exclude_seen_targets",
            "learn_temperature",
            "logq_correction",
        ):
            require_flag(name, getattr(self, name))
        if not isinstance(self.device, str) or not self.device.strip():
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")
        # Reuse the baseline's validation (finite, >= 0 weights) and store its normalised form.
        base = UserVectorConfig(
            event_weights=self.event_weights, half_life_days=float(self.half_life_days)
        )
        weights = {e: float(base.event_weights.get(e, 0.0)) for e in EventType}
        if not any(weights.values()):
            raise ConfigError(f"event_weights must give some event a weight > 0, got {weights}.")
        object.__setattr__(self, "event_weights", weights)
        targets: object = self.target_events
        if isinstance(targets, str) or not isinstance(targets, Iterable):
            raise ConfigError(
                f"target_events must be a list of event types, got {targets!r}; "
                f"e.g. ['cart', 'purchase'] (valid: {[e.value for e in EventType]})."
            )
        try:
            parsed = tuple(dict.fromkeys(EventType(e) for e in targets))
        except ValueError:
            raise ConfigError(
                f"target_events must be event types from {[e.value for e in EventType]}, "
                f"got {list(targets)!r}."
            ) from None
        if not parsed:
            raise ConfigError("target_events must name at least one event type, got none.")
        object.__setattr__(self, "target_events", parsed)

    @property
    def baseline_config(self) -> UserVectorConfig:
        """The mean-vector baseline this tower starts from (and is compared with)."""
        return UserVectorConfig(
            event_weights=self.event_weights, half_life_days=self.half_life_days
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["event_weights"] = {e.value: w for e, w in self.event_weights.items()}
        out["target_events"] = [e.value for e in self.target_events]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserTowerConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error."""
        require_known_fields(cls, data)
        kwargs = dict(data)
        if "target_events" in kwargs and isinstance(kwargs["target_events"], list):
            kwargs["target_events"] = tuple(kwargs["target_events"])
        return cls(**kwargs)
