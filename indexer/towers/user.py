"""A trained user tower: a small sequence model that maps a user's recent history to a point
in the product space.

Products enter only through their frozen content vectors (there are no product-id
embeddings), so the tower scores products it never saw in training, brand-new arrivals
included, exactly as it scores old ones.

Model (residual on the baseline of :mod:`.users`):

* input: the user's last ``max_history`` events on indexed products, oldest first, each
  as (product content vector, event type, ``log1p`` of the days between the event and the
  prediction time);
* a recency- and event-weighted mean of the history vectors, the baseline of
  :class:`~newarrivals.indexer.retrieval.users.UserVectors` (its event weights and half-life
  start at
  the configured values and are learnt when ``learn_mean_weights``);
* a GRU (or a small transformer) over the events; a head reads its state at the most
  recent event and proposes a correction in the product space;
* output: ``normalize(mean + correction)``. The head's last layer starts at zero, so an
  untrained tower *is* the baseline; early stopping keeps the best epoch on held-out users
  and epoch 0 (the baseline) competes too, so on validation the tower matches or beats it.

Training (:func:`train_user_tower`): for every user, events in time order; each event of a
``target_events`` type on a product not already in the user's history (repeats are what the
mean already captures; the tower is for discovery) is a target, predicted from the events
before it, as of the target's time. Loss: sampled softmax over the batch's target vectors
(in-batch negatives; a product appearing twice in a batch is not its own negative) plus
``random_negatives`` products drawn uniformly from the catalogue (in-batch negatives alone
are drawn by popularity; uniform ones stand for the long tail of the full ranking).
Validation: held-out users, recall@``valid_k`` of each target among all products (the
user's history excluded), for the tower and for the fixed-weight baseline on the same
targets. The caller decides what the tower may see: pass only pre-cutoff interactions for
an evaluation.

Incremental updates: a user's vector depends only on their last ``max_history`` events, so
:class:`UserHistoryStore` keeps a bounded, time-ordered history per user and one new event
recomputes that user alone (O(``max_history``) work).

Artifact layout (one directory)::

    user_tower.json          # format, config, dim, training report, library versions
    user_tower.safetensors   # the weights (CPU tensors)

Example:
    >>> tower, report = train_user_tower(events, ids, vectors, UserTowerConfig())  # doctest: +SKIP
    >>> users, vecs = tower.user_vectors(events, ids, vectors)  # doctest: +SKIP
    >>> tower.save(Path("artifacts/user-tower"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import time
from bisect import insort
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

from newarrivals.indexer.catalog.schema import EventType, Interaction
from newarrivals.indexer.device import resolve_device
from newarrivals.indexer.errors import ConfigError, IndexIntegrityError, NewArrivalsError
from newarrivals.indexer.index.version import library_versions
from newarrivals.indexer.retrieval.users import DEFAULT_EVENT_WEIGHTS, UserVectorConfig
from newarrivals.indexer.towers.training_loop import EpochOutcome, TimeBudget, run_epochs
from newarrivals.indexer.validation import (
    require_flag,
    require_fraction,
    require_int,
    require_known_fields,
    require_positive,
)

__all__ = [
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "ArrayProductVectors",
    "ProductVectors",
    "UserHistory",
    "UserHistoryStore",
    "UserTower",
    "UserTowerConfig",
    "train_user_tower",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

MANIFEST_FILE: Final = "user_tower.json"
WEIGHTS_FILE: Final = "user_tower.safetensors"
FORMAT: Final = "newarrivals-user-tower"
FORMAT_VERSION: Final = 1
MODELS: Final = ("gru", "transformer")

_DAY: Final = 86_400.0
# Event codes: 0 is padding, then the event types in their declared (weakest-first) order.
_EVENT_CODE: Final = {e: i + 1 for i, e in enumerate(EventType)}
_N_CODES: Final = len(EventType) + 1
# Floor for a zero event weight before taking its log (a learnt weight must stay positive).
_MIN_WEIGHT: Final = 1e-4
_TEMPERATURE_RANGE: Final = (0.005, 2.0)
# Users per forward pass at inference, and validation rows per scoring block.
_INFER_BATCH: Final = 1024
_SCORE_BLOCK: Final = 512


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


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
        low, high = _TEMPERATURE_RANGE
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


# --------------------------------------------------------------------------------------
# Product vectors
# --------------------------------------------------------------------------------------


class ProductVectors(Protocol):
    """Where the tower looks up content vectors (a ``ProductIndex`` is one)."""

    @property
    def dim(self) -> int: ...

    def __contains__(self, product_id: object) -> bool: ...

    def vectors_for(self, product_ids: Sequence[str]) -> FloatArray: ...


class ArrayProductVectors:
    """:class:`ProductVectors` over an id list and a matrix (rows L2-normalised on a copy).

    Example:
        >>> vecs = ArrayProductVectors(["a", "b"], np.eye(2, 3, dtype=np.float32))
        >>> vecs.dim, "a" in vecs, vecs.vectors_for(["b"]).shape
        (3, True, (1, 3))
    """

    def __init__(self, product_ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"product vectors must be a 2-d (n, dim) array, got {matrix.shape}.")
        if matrix.shape[0] != len(product_ids):
            raise ValueError(
                f"got {len(product_ids)} product ids but {matrix.shape[0]} vector rows; "
                "pass one row per id."
            )
        if not np.all(np.isfinite(matrix)):
            raise ValueError("product vectors contain NaN or infinite values.")
        self.row_of: dict[str, int] = {}
        for i, pid in enumerate(product_ids):
            if pid in self.row_of:
                raise ValueError(f"product id {pid!r} appears twice; ids must be unique.")
            self.row_of[pid] = i
        # Zero rows stay zero (they contribute nothing to a mean and score 0).
        self.matrix: FloatArray = _unit_rows(matrix)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def __contains__(self, product_id: object) -> bool:
        return isinstance(product_id, str) and product_id in self.row_of

    def vectors_for(self, product_ids: Sequence[str]) -> FloatArray:
        rows: FloatArray = self.matrix[[self.row_of[p] for p in product_ids]]
        return rows


# --------------------------------------------------------------------------------------
# Event sequences
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sequences:
    """Every user's events on known products, concatenated user after user, time-ordered.

    User ``u`` owns positions ``starts[u]:starts[u + 1]``.
    """

    user_ids: list[str]
    starts: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]
    codes: npt.NDArray[np.int64]
    times: npt.NDArray[np.float64]

    @classmethod
    def of(cls, events: Iterable[Interaction], row_of: Mapping[str, int]) -> _Sequences:
        usable = [e for e in events if e.product_id in row_of]
        usable.sort(key=lambda e: (e.user_id, e.timestamp))
        user_ids: list[str] = []
        starts: list[int] = []
        for i, e in enumerate(usable):
            if not user_ids or user_ids[-1] != e.user_id:
                user_ids.append(e.user_id)
                starts.append(i)
        starts.append(len(usable))
        return cls(
            user_ids=user_ids,
            starts=np.asarray(starts, dtype=np.int64),
            rows=np.asarray([row_of[e.product_id] for e in usable], dtype=np.int64),
            codes=np.asarray([_EVENT_CODE[e.event] for e in usable], dtype=np.int64),
            times=np.asarray([e.timestamp.timestamp() for e in usable], dtype=np.float64),
        )


@dataclass(frozen=True)
class _Batch:
    """A right-padded batch of histories: row ``b`` holds ``lengths[b]`` events, oldest first."""

    rows: torch.Tensor  # (B, L) int64 product rows (0 where padded)
    codes: torch.Tensor  # (B, L) int64 event codes (0 where padded)
    gap_days: torch.Tensor  # (B, L) float32 days from the event to the prediction time
    lengths: torch.Tensor  # (B,) int64, >= 1


def _collate(
    seq: _Sequences,
    begin: npt.NDArray[np.int64],
    end: npt.NDArray[np.int64],
    at: npt.NDArray[np.float64],
    max_history: int,
    device: str,
) -> _Batch:
    """Histories ``positions[max(begin, end - max_history):end]`` predicted as of ``at``."""
    first = np.maximum(begin, end - max_history)
    lengths = end - first
    width = max(1, int(lengths.max(initial=1)))
    offsets = np.arange(width, dtype=np.int64)
    valid = offsets[None, :] < lengths[:, None]
    # Right-padded so that a GRU's output at lengths - 1 never saw a pad.
    pos = np.where(valid, first[:, None] + offsets[None, :], 0)
    gap = np.where(valid, np.maximum(at[:, None] - seq.times[pos], 0.0) / _DAY, 0.0)
    return _Batch(
        rows=torch.as_tensor(np.where(valid, seq.rows[pos], 0), device=device),
        codes=torch.as_tensor(np.where(valid, seq.codes[pos], 0), device=device),
        gap_days=torch.as_tensor(gap.astype(np.float32), device=device),
        lengths=torch.as_tensor(lengths, device=device),
    )


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class _TowerNet(nn.Module):
    """Weighted-mean baseline plus a learnt, zero-initialised sequence-model correction."""

    def __init__(self, dim: int, config: UserTowerConfig, temperature: float = 0.1) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.model = config.model
        self.in_proj = nn.Linear(dim, hidden)
        self.event_embedding = nn.Embedding(_N_CODES, hidden, padding_idx=0)
        self.gap_proj = nn.Linear(1, hidden)
        self.encoder: nn.Module
        if config.model == "gru":
            self.encoder = nn.GRU(
                hidden,
                hidden,
                num_layers=config.num_layers,
                batch_first=True,
                dropout=config.dropout if config.num_layers > 1 else 0.0,
            )
        else:
            # Recency rank (0 = most recent) as the position, so the pooled last token
            # always carries the same position embedding.
            self.position = nn.Embedding(config.max_history, hidden)
            layer = nn.TransformerEncoderLayer(
                hidden,
                config.num_heads,
                dim_feedforward=2 * hidden,
                dropout=config.dropout,
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(
                layer, config.num_layers, enable_nested_tensor=False
            )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU())
        self.out = nn.Linear(hidden, dim)
        # Zero start: the untrained tower returns exactly the weighted-mean baseline.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        weights = [_MIN_WEIGHT] + [max(config.event_weights[e], _MIN_WEIGHT) for e in EventType]
        log_w = torch.log(torch.tensor(weights, dtype=torch.float32))
        log_h = torch.log(torch.tensor(float(config.half_life_days)))
        log_t = torch.log(torch.tensor(float(temperature)))
        if config.learn_mean_weights:
            self.log_event_weight = nn.Parameter(log_w)
            self.log_half_life = nn.Parameter(log_h)
        else:
            self.register_buffer("log_event_weight", log_w)
            self.register_buffer("log_half_life", log_h)
        if config.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    def temperature(self) -> torch.Tensor:
        low, high = _TEMPERATURE_RANGE
        return self.log_temperature.exp().clamp(low, high)

    def mean(self, x: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """The recency- and event-weighted mean of the history, L2-normalised."""
        mask = batch.codes > 0
        decay = torch.exp(-math.log(2.0) * batch.gap_days / self.log_half_life.exp())
        w = self.log_event_weight.exp()[batch.codes] * decay * mask
        return F.normalize((w.unsqueeze(-1) * x).sum(1), dim=-1)

    def forward(self, products: torch.Tensor, batch: _Batch) -> torch.Tensor:
        x = products[batch.rows]  # (B, L, D)
        mean = self.mean(x, batch)
        h = (
            self.in_proj(x)
            + self.event_embedding(batch.codes)
            + self.gap_proj(torch.log1p(batch.gap_days).unsqueeze(-1))
        )
        last = (batch.lengths - 1).clamp(min=0)
        idx = torch.arange(h.shape[0], device=h.device)
        if self.model == "gru":
            out, _ = self.encoder(self.dropout(h))
        else:
            steps = torch.arange(h.shape[1], device=h.device)
            rank = (last.unsqueeze(1) - steps.unsqueeze(0)).clamp(min=0)
            pad = steps.unsqueeze(0) >= batch.lengths.unsqueeze(1)
            out = self.encoder(self.dropout(h + self.position(rank)), src_key_padding_mask=pad)
        state = out[idx, last]
        correction = self.out(self.head(self.dropout(torch.cat([state, self.in_proj(mean)], -1))))
        return F.normalize(mean + correction, dim=-1)


def _baseline(products: torch.Tensor, batch: _Batch, config: UserTowerConfig) -> torch.Tensor:
    """The fixed-weight mean (the ``users.py`` baseline over the same window), normalised."""
    weights = torch.tensor(
        [0.0] + [config.event_weights[e] for e in EventType], device=products.device
    )
    decay = torch.exp(-math.log(2.0) * batch.gap_days / config.half_life_days)
    w = weights[batch.codes] * decay
    return F.normalize((w.unsqueeze(-1) * products[batch.rows]).sum(1), dim=-1)


# --------------------------------------------------------------------------------------
# The tower
# --------------------------------------------------------------------------------------


class UserTower:
    """A trained user tower: histories in, unit vectors in the product space out.

    Build it with :func:`train_user_tower` or :meth:`load`.

    Example:
        >>> tower = UserTower.load(Path("artifacts/user-tower"))  # doctest: +SKIP
        >>> ids, vecs = tower.user_vectors(events, product_ids, product_vectors)  # doctest: +SKIP
        >>> store.search(vecs, k=10, filter=SearchFilter(launched_after=cutoff))  # doctest: +SKIP
    """

    def __init__(
        self,
        net: _TowerNet,
        config: UserTowerConfig,
        dim: int,
        *,
        device: str = "cpu",
        report: Mapping[str, Any] | None = None,
    ) -> None:
        self._net = net.to(device).eval()
        self.config = config
        self.dim = dim
        self.device = device
        self.report: dict[str, Any] = dict(report or {})

    # -- inference ------------------------------------------------------------------

    def _check_dim(self, dim: int) -> None:
        if dim != self.dim:
            raise IndexIntegrityError(
                f"the user tower was trained on {self.dim}-dim product vectors but was given "
                f"{dim}-dim ones; retrain it against this index with `newarrivals train-users`."
            )

    @torch.inference_mode()
    def _encode(
        self, products: FloatArray, seq: _Sequences, at: npt.NDArray[np.float64]
    ) -> FloatArray:
        """One vector per user of ``seq``, each predicted as of ``at[user]``."""
        matrix = torch.as_tensor(products, device=self.device)
        n = len(seq.user_ids)
        out = np.empty((n, self.dim), dtype=np.float32)
        for lo in range(0, n, _INFER_BATCH):
            hi = min(n, lo + _INFER_BATCH)
            batch = _collate(
                seq, seq.starts[lo:hi], seq.starts[lo + 1 : hi + 1], at[lo:hi],
                self.config.max_history, self.device,
            )  # fmt: skip
            out[lo:hi] = self._net(matrix, batch).float().cpu().numpy()
        return out

    def user_vectors(
        self,
        interactions: Iterable[Interaction],
        product_ids: Sequence[str],
        product_vectors: npt.ArrayLike,
        *,
        now: datetime | None = None,
    ) -> tuple[list[str], FloatArray]:
        """Vectors for every user with at least one event on a known product.

        Args:
            interactions: Events in any order; those on unknown products are skipped.
            product_ids: Ids of the rows of ``product_vectors``.
            product_vectors: ``(len(product_ids), dim)`` content vectors.
            now: Prediction time (timezone-aware): events after it are ignored and time
                gaps are measured to it. ``None``: each user's latest event.

        Returns:
            User ids (sorted) and their ``(n_users, dim)`` float32 unit vectors.

        Raises:
            IndexIntegrityError: when ``dim`` differs from the tower's.
        """
        vectors = ArrayProductVectors(product_ids, product_vectors)
        self._check_dim(vectors.dim)
        events: Iterable[Interaction] = interactions
        if now is not None:
            _check_aware(now)
            events = (e for e in interactions if e.timestamp <= now)
        seq = _Sequences.of(events, vectors.row_of)
        if not seq.user_ids:
            return [], np.empty((0, self.dim), dtype=np.float32)
        if now is None:
            at = seq.times[seq.starts[1:] - 1]
        else:
            at = np.full(len(seq.user_ids), now.timestamp(), dtype=np.float64)
        return list(seq.user_ids), self._encode(vectors.matrix, seq, at)

    def vector_for(
        self,
        history: Sequence[Interaction],
        products: ProductVectors,
        *,
        now: datetime | None = None,
    ) -> FloatArray | None:
        """One user's vector from their events (only the last ``max_history`` are read).

        Args:
            history: The user's events, any order; events on products missing from
                ``products`` (or after ``now``) are skipped.
            products: The content vectors (a ``ProductIndex`` or ``ArrayProductVectors``).
            now: Prediction time (timezone-aware); ``None``: the latest event.

        Returns:
            A ``(dim,)`` unit vector, or ``None`` when no event is on a known product.
        """
        return self.vectors_for([history], products, now=now)[0]

    def vectors_for(
        self,
        histories: Sequence[Sequence[Interaction]],
        products: ProductVectors,
        *,
        now: datetime | None = None,
    ) -> list[FloatArray | None]:
        """:meth:`vector_for` for many users in batched forward passes."""
        self._check_dim(products.dim)
        if now is not None:
            _check_aware(now)
        kept: list[list[Interaction]] = []
        for events in histories:
            usable = [
                e
                for e in events
                if e.product_id in products and (now is None or e.timestamp <= now)
            ]
            usable.sort(key=lambda e: e.timestamp)
            kept.append(usable[-self.config.max_history :])
        ids = list(dict.fromkeys(e.product_id for events in kept for e in events))
        if not ids:
            return [None] * len(histories)
        matrix = _unit_rows(np.asarray(products.vectors_for(ids), dtype=np.float32))
        row_of = {p: i for i, p in enumerate(ids)}
        # Key each history by its position so _Sequences keeps them apart and in order.
        width = len(str(len(kept)))
        seq = _Sequences.of(
            (
                Interaction(f"{i:0{width}d}", e.product_id, e.event, e.timestamp)
                for i, events in enumerate(kept)
                for e in events
            ),
            row_of,
        )
        if now is None:
            at = seq.times[seq.starts[1:] - 1]
        else:
            at = np.full(len(seq.user_ids), now.timestamp(), dtype=np.float64)
        encoded = self._encode(matrix, seq, at)
        out: list[FloatArray | None] = [None] * len(histories)
        for row, key in enumerate(seq.user_ids):
            out[int(key)] = encoded[row]
        return out

    # -- persistence ----------------------------------------------------------------

    def save(self, directory: Path) -> Path:
        """Write the weights (safetensors) and the manifest into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self._net.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "config": self.config.to_dict(),
            "report": self.report,
            "n_parameters": int(sum(v.numel() for v in state.values())),
            "library_versions": library_versions(),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(
        cls, directory: Path, device: str = "cpu", *, expected_dim: int | None = None
    ) -> UserTower:
        """Load a saved tower and check its invariants.

        Args:
            directory: What :meth:`save` wrote.
            device: A resolved torch device (``cpu``, ``cuda``, ``cuda:N``).
            expected_dim: The product vectors' dimension, checked when given.

        Raises:
            IndexIntegrityError: missing files, an unknown format, weights that disagree
                with the manifest, or ``expected_dim`` that differs from the tower's.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        manifest_path, weights_path = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
        for path in (manifest_path, weights_path):
            if not path.is_file():
                raise IndexIntegrityError(
                    f"no user tower at {directory}: {path.name} is missing; train one with "
                    "`newarrivals train-users`."
                )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise IndexIntegrityError(
                f"{manifest_path} has format {manifest.get('format')!r} version "
                f"{manifest.get('format_version')!r}; this code reads {FORMAT!r} version "
                f"{FORMAT_VERSION}. Retrain with `newarrivals train-users`."
            )
        config = UserTowerConfig.from_dict(manifest["config"])
        dim = int(manifest["dim"])
        state = load_file(str(weights_path), device="cpu")
        weight_dim = int(state["out.weight"].shape[0]) if "out.weight" in state else -1
        if weight_dim != dim:
            raise IndexIntegrityError(
                f"{weights_path} outputs {weight_dim}-dim vectors but the manifest says "
                f"{dim}; the artifact is corrupt, retrain it."
            )
        net = _TowerNet(dim, config)  # the saved weights overwrite the temperature
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise IndexIntegrityError(
                f"{weights_path} does not match the configured architecture: missing "
                f"{sorted(missing)}, unexpected {sorted(unexpected)}."
            )
        tower = cls(net, config, dim, device=device, report=manifest.get("report"))
        if expected_dim is not None:
            tower._check_dim(expected_dim)
        return tower


def _unit_rows(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: FloatArray = (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ConfigError(
            f"now must be timezone-aware, got naive {now.isoformat()}; add tzinfo=UTC."
        )


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Examples:
    """Targets as (user's first position, target position, target product row)."""

    begin: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    target: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.end.size)

    def take(self, idx: npt.NDArray[np.int64]) -> _Examples:
        return _Examples(self.begin[idx], self.end[idx], self.target[idx])


def _examples(seq: _Sequences, users: Iterable[int], config: UserTowerConfig) -> _Examples:
    targets = np.asarray([_EVENT_CODE[e] for e in config.target_events], dtype=np.int64)
    begin: list[int] = []
    end: list[int] = []
    target: list[int] = []
    for u in users:
        s, e = int(seq.starts[u]), int(seq.starts[u + 1])
        seen: set[int] = set()
        rows = seq.rows[s:e].tolist()
        is_target = np.isin(seq.codes[s:e], targets).tolist()
        for j, row in enumerate(rows):
            if j > 0 and is_target[j] and not (config.exclude_seen_targets and row in seen):
                begin.append(s)
                end.append(s + j)
                target.append(row)
            seen.add(row)
    return _Examples(
        np.asarray(begin, dtype=np.int64),
        np.asarray(end, dtype=np.int64),
        np.asarray(target, dtype=np.int64),
    )


def _batches(
    seq: _Sequences, ex: _Examples, batch_size: int, max_history: int, device: str
) -> Iterator[tuple[_Batch, torch.Tensor]]:
    for lo in range(0, len(ex), batch_size):
        part = ex.take(np.arange(lo, min(len(ex), lo + batch_size), dtype=np.int64))
        at = seq.times[part.end]
        batch = _collate(seq, part.begin, part.end, at, max_history, device)
        yield batch, torch.as_tensor(part.target, device=device)


def _softmax_loss(
    users: torch.Tensor,
    products: torch.Tensor,
    target: torch.Tensor,
    temperature: torch.Tensor,
    negatives: torch.Tensor | None,
    log_count: torch.Tensor | None,
) -> torch.Tensor:
    """Sampled softmax: each user's target against the batch's other targets (+ negatives).

    ``log_count[j]`` is the log of product ``j``'s expected number of appearances among a
    step's sampled columns; subtracting it from every sampled logit (the sampled-softmax
    "logQ" correction) keeps popular products, which turn up as in-batch negatives far
    more often, from being pushed down merely for being popular.
    """
    logits = users @ products[target].T / temperature
    if log_count is not None:
        logits = logits - log_count[target].unsqueeze(0)
    # A product that is the target of two rows is not a negative for either of them.
    same = target.unsqueeze(1) == target.unsqueeze(0)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    if negatives is not None and negatives.numel():
        extra = users @ products[negatives].T / temperature
        if log_count is not None:
            extra = extra - log_count[negatives].unsqueeze(0)
        extra = extra.masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    labels = torch.arange(users.shape[0], device=users.device)
    return F.cross_entropy(logits, labels)


def _recall(
    user_vecs: torch.Tensor, products: torch.Tensor, batch: _Batch, target: torch.Tensor, k: int
) -> torch.Tensor:
    """Per-example hit@k of the target among all products, the user's history excluded."""
    scores = user_vecs @ products.T
    # scatter_add, not scatter: padded slots also point at row 0 and must not unset it.
    counts = torch.zeros_like(scores, dtype=torch.int64)
    history = counts.scatter_add_(1, batch.rows, (batch.codes > 0).long()) > 0
    history[torch.arange(scores.shape[0]), target] = False
    scores = scores.masked_fill(history, float("-inf"))
    own = scores.gather(1, target.unsqueeze(1))
    return ((scores > own).sum(1) < k).float()


@torch.inference_mode()
def _evaluate(
    net: _TowerNet,
    products: torch.Tensor,
    seq: _Sequences,
    ex: _Examples,
    config: UserTowerConfig,
    device: str,
) -> tuple[float, float, float]:
    """(in-batch loss, tower recall@k, baseline recall@k) on the validation examples."""
    net.eval()
    losses: list[float] = []
    hits: list[torch.Tensor] = []
    base: list[torch.Tensor] = []
    for batch, target in _batches(seq, ex, _SCORE_BLOCK, config.max_history, device):
        u = net(products, batch)
        if target.numel() > 1:
            losses.append(float(_softmax_loss(u, products, target, net.temperature(), None, None)))
        hits.append(_recall(u, products, batch, target, config.valid_k))
        base.append(
            _recall(_baseline(products, batch, config), products, batch, target, config.valid_k)
        )
    loss = float(np.mean(losses)) if losses else float("nan")
    return loss, float(torch.cat(hits).mean()), float(torch.cat(base).mean())


@torch.inference_mode()
def _calibrate_temperature(
    products: torch.Tensor,
    seq: _Sequences,
    ex: _Examples,
    config: UserTowerConfig,
    log_count: torch.Tensor | None,
    device: str,
    gen: torch.Generator,
) -> float:
    """The grid temperature with the lowest baseline training loss (first 16 batches)."""
    grid = np.geomspace(0.01, 1.0, 21)
    losses = np.zeros(len(grid))
    for i, (batch, target) in enumerate(
        _batches(seq, ex, config.batch_size, config.max_history, device)
    ):
        if i == 16:
            break
        if target.numel() < 2:
            continue
        base = _baseline(products, batch, config)
        negatives = _negatives(len(products), config, gen, device)
        for j, tau in enumerate(grid):
            t = torch.tensor(float(tau), device=device)
            losses[j] += float(_softmax_loss(base, products, target, t, negatives, log_count))
    return float(grid[int(np.argmin(losses))])


def _negatives(
    n_products: int, config: UserTowerConfig, gen: torch.Generator, device: str
) -> torch.Tensor | None:
    if not config.random_negatives:
        return None
    return torch.randint(n_products, (config.random_negatives,), generator=gen, device=device)


def train_user_tower(
    interactions: Iterable[Interaction],
    product_ids: Sequence[str],
    product_vectors: npt.ArrayLike,
    config: UserTowerConfig,
    *,
    progress: bool = True,
) -> tuple[UserTower, dict[str, Any]]:
    """Train a user tower on the given interactions (and nothing else).

    Args:
        interactions: The events the tower may learn from, any order (for an evaluation,
            only those before the cutoff); events on unknown products are skipped.
        product_ids: Ids of the rows of ``product_vectors``.
        product_vectors: ``(len(product_ids), dim)`` frozen content vectors.
        config: Architecture and training settings.
        progress: Log one line per epoch at INFO (else at DEBUG).

    Returns:
        The tower (best validation epoch) and a JSON-ready report: epochs run, best epoch,
        seconds, example counts, per-epoch train/valid loss and valid recall@k, and the
        baseline's valid recall@k on the same targets.

    Raises:
        NewArrivalsError: when there are no training targets (every user has fewer than
            two usable events).
    """
    started = time.monotonic()
    # The budget counts from here: preparing the examples is part of training's cost.
    budget = TimeBudget(config.max_minutes)
    device = resolve_device(config.device)
    vectors = ArrayProductVectors(product_ids, product_vectors)
    seq = _Sequences.of(interactions, vectors.row_of)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(seq.user_ids))
    n_valid = round(config.valid_fraction * len(order)) if len(order) >= 2 else 0
    if config.valid_fraction > 0 and len(order) >= 2:
        n_valid = min(max(n_valid, 1), len(order) - 1)
    train_ex = _examples(seq, sorted(order[n_valid:].tolist()), config)
    valid_ex = _examples(seq, sorted(order[:n_valid].tolist()), config)
    if len(valid_ex) > config.max_valid_examples:
        keep = np.sort(rng.choice(len(valid_ex), config.max_valid_examples, replace=False))
        valid_ex = valid_ex.take(keep.astype(np.int64))
    if len(train_ex) == 0:
        raise NewArrivalsError(
            f"no training targets: {len(seq.user_ids)} users with events on the "
            f"{len(vectors)} known products, but none has an event of type "
            f"{[e.value for e in config.target_events]} after an earlier one; pass more "
            "interactions or widen target_events."
        )
    log = logger.info if progress else logger.debug
    log(
        "user tower: %d train / %d valid users, %d / %d targets, %d products (dim %d), %s",
        len(order) - n_valid, n_valid, len(train_ex), len(valid_ex), len(vectors), vectors.dim,
        device,
    )  # fmt: skip

    fork_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        gen = torch.Generator(device=device).manual_seed(config.seed)
        products = torch.as_tensor(vectors.matrix, device=device)
        log_count = None
        if config.logq_correction:
            share = np.bincount(train_ex.target, minlength=len(vectors)) / len(train_ex)
            expected = min(config.batch_size, len(train_ex)) * share
            expected += config.random_negatives / len(vectors)
            log_count = torch.as_tensor(
                np.log(np.maximum(expected, 1e-12)), dtype=torch.float32, device=device
            )
        temperature = config.temperature
        if temperature is None:
            temperature = _calibrate_temperature(
                products, seq, train_ex, config, log_count, device, gen
            )
            log("user tower: calibrated temperature %.3g", temperature)
        net = _TowerNet(vectors.dim, config, temperature).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        history: list[dict[str, float | None]] = []
        initial_recall, baseline_recall = -math.inf, float("nan")
        if len(valid_ex):
            loss0, initial_recall, baseline_recall = _evaluate(
                net, products, seq, valid_ex, config, device
            )
            # Epoch 0 is the untrained tower, i.e. the baseline: it competes for "best".
            history.append(
                {
                    "epoch": 0,
                    "train_loss": None,
                    "valid_loss": loss0,
                    "valid_recall": initial_recall,
                }
            )

        def run_epoch(epoch: int, budget: TimeBudget) -> EpochOutcome[dict[str, float | None]]:
            net.train()
            perm = torch.randperm(len(train_ex), generator=gen, device=device).cpu().numpy()
            shuffled = train_ex.take(perm.astype(np.int64))
            total, steps = 0.0, 0
            for batch, target in _batches(
                seq, shuffled, config.batch_size, config.max_history, device
            ):
                if target.numel() < 2:
                    continue  # a lone example has no in-batch negative
                negatives = _negatives(len(vectors), config, gen, device)
                loss = _softmax_loss(
                    net(products, batch),
                    products,
                    target,
                    net.temperature(),
                    negatives,
                    log_count,
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
                if budget.expired():
                    break
            row: dict[str, float | None] = {"epoch": epoch, "train_loss": total / max(steps, 1)}
            score = None
            if len(valid_ex):
                v_loss, score, _ = _evaluate(net, products, seq, valid_ex, config, device)
                row.update(valid_loss=v_loss, valid_recall=score)
            log(
                "user tower epoch %d: %s",
                epoch,
                {k: v if v is None else round(v, 4) for k, v in row.items()},
            )
            return EpochOutcome(record=row, score=score)

        run = run_epochs(
            net,
            run_epoch,
            max_epochs=config.epochs,
            budget=budget,
            patience=config.patience,
            initial_score=initial_recall,
            score_name="validation recall",
        )
        history.extend(run.records)
    net.eval()
    report: dict[str, Any] = {
        "epochs": run.epochs_run,
        "best_epoch": run.best_epoch,
        "stopped_early": run.epochs_run < config.epochs,
        "timed_out": run.timed_out,
        "seconds": round(time.monotonic() - started, 3),
        "device": device,
        "n_products": len(vectors),
        "dim": vectors.dim,
        "n_train_users": len(order) - n_valid,
        "n_valid_users": n_valid,
        "n_train_examples": len(train_ex),
        "n_valid_examples": len(valid_ex),
        "valid_k": config.valid_k,
        "valid_recall": run.best_score if len(valid_ex) else None,
        "valid_recall_baseline": baseline_recall if len(valid_ex) else None,
        "temperature_initial": temperature,
        "temperature": float(net.temperature().detach()),
        "event_weights": {
            e.value: float(net.log_event_weight[_EVENT_CODE[e]].detach().exp()) for e in EventType
        },
        "half_life_days": float(net.log_half_life.detach().exp()),
        "history": history,
    }
    return UserTower(net, config, vectors.dim, device=device, report=report), report


# --------------------------------------------------------------------------------------
# Incremental serving state
# --------------------------------------------------------------------------------------


@dataclass
class UserHistory:
    """One user's last ``max_history`` usable events (time-ordered), purchases and vector."""

    events: list[Interaction] = field(default_factory=list)
    purchased: set[str] = field(default_factory=set)
    vector: FloatArray | None = None


class UserHistoryStore:
    """Per-user bounded histories and tower vectors, updated one event at a time.

    A new event touches only its user: it is inserted into that user's time-ordered history
    (the oldest event beyond ``max_history`` is dropped) and the user's vector is recomputed
    from at most ``max_history`` events. Vectors are as of each user's latest event; use
    :meth:`vector_at` for another prediction time. ``vector`` and ``state`` make it a drop-in
    for ``UserVectors`` in :func:`~newarrivals.indexer.retrieval.search.retrieve_for_user`.

    Example:
        >>> users = UserHistoryStore(tower, store)  # doctest: +SKIP
        >>> users.update_many(catalog.interactions)  # doctest: +SKIP
        >>> users.update(Interaction("u1", "sku-9", EventType.CART, now))  # doctest: +SKIP
        >>> retrieve_for_user(store, users, "u1", k=10)  # doctest: +SKIP
    """

    def __init__(self, tower: UserTower, products: ProductVectors) -> None:
        tower._check_dim(products.dim)
        self.tower = tower
        self.products = products
        self._users: dict[str, UserHistory] = {}

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and user_id in self._users

    def __len__(self) -> int:
        return len(self._users)

    def user_ids(self) -> list[str]:
        return list(self._users)

    def state(self, user_id: str) -> UserHistory | None:
        return self._users.get(user_id)

    def vector(self, user_id: str) -> FloatArray | None:
        """The user's unit vector as of their latest event, or ``None`` without history."""
        st = self._users.get(user_id)
        return None if st is None else st.vector

    def vector_at(self, user_id: str, now: datetime) -> FloatArray | None:
        """The user's vector as of ``now`` (recomputed; time gaps measured to ``now``)."""
        st = self._users.get(user_id)
        return None if st is None else self.tower.vector_for(st.events, self.products, now=now)

    def _insert(self, event: Interaction) -> bool:
        if event.product_id not in self.products:
            return False
        st = self._users.setdefault(event.user_id, UserHistory())
        insort(st.events, event, key=lambda e: e.timestamp)
        del st.events[: max(0, len(st.events) - self.tower.config.max_history)]
        if event.event is EventType.PURCHASE:
            st.purchased.add(event.product_id)
        return True

    def update(self, event: Interaction) -> bool:
        """Fold one event in and recompute only its user; False for an unknown product."""
        if not self._insert(event):
            return False
        st = self._users[event.user_id]
        st.vector = self.tower.vector_for(st.events, self.products)
        return True

    def update_many(self, events: Iterable[Interaction]) -> int:
        """Fold many events in, recomputing each touched user once; returns events used."""
        touched: set[str] = set()
        used = 0
        for e in events:
            if self._insert(e):
                touched.add(e.user_id)
                used += 1
        order = sorted(touched)
        vectors = self.tower.vectors_for([self._users[u].events for u in order], self.products)
        for user_id, vec in zip(order, vectors, strict=True):
            self._users[user_id].vector = vec
        return used

    def erase(self, user_id: str) -> bool:
        return self._users.pop(user_id, None) is not None
