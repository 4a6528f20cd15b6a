"""The user tower's network: a weighted-mean baseline plus a learnt sequence-model
correction."""

from __future__ import annotations

import math
from typing import Final

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

from newarrivals.indexer.catalog.schema import EventType
from newarrivals.indexer.towers.user_config import N_EVENT_CODES, TEMPERATURE_RANGE, UserTowerConfig
from newarrivals.indexer.towers.user_data import HistoryBatch

__all__ = ["UserTowerNet", "baseline_mean"]

# Floor for a zero event weight before taking its log (a learnt weight must stay positive).
_MIN_WEIGHT: Final = 1e-4


class UserTowerNet(nn.Module):
    """Weighted-mean baseline plus a learnt, zero-initialised sequence-model correction."""

    def __init__(self, dim: int, config: UserTowerConfig, temperature: float = 0.1) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.model = config.model
        self.in_proj = nn.Linear(dim, hidden)
        self.event_embedding = nn.Embedding(N_EVENT_CODES, hidden, padding_idx=0)
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
        low, high = TEMPERATURE_RANGE
        return self.log_temperature.exp().clamp(low, high)

    def mean(self, x: torch.Tensor, batch: HistoryBatch) -> torch.Tensor:
        """The recency- and event-weighted mean of the history, L2-normalised."""
        mask = batch.codes > 0
        decay = torch.exp(-math.log(2.0) * batch.gap_days / self.log_half_life.exp())
        w = self.log_event_weight.exp()[batch.codes] * decay * mask
        return F.normalize((w.unsqueeze(-1) * x).sum(1), dim=-1)

    def forward(self, products: torch.Tensor, batch: HistoryBatch) -> torch.Tensor:
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


def baseline_mean(
    products: torch.Tensor, batch: HistoryBatch, config: UserTowerConfig
) -> torch.Tensor:
    """The fixed-weight mean (the ``users.py`` baseline over the same window), normalised."""
    weights = torch.tensor(
        [0.0] + [config.event_weights[e] for e in EventType], device=products.device
    )
    decay = torch.exp(-math.log(2.0) * batch.gap_days / config.half_life_days)
    w = weights[batch.codes] * decay
    return F.normalize((w.unsqueeze(-1) * products[batch.rows]).sum(1), dim=-1)
