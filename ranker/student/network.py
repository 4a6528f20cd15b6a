"""The torch modules of the shared-context cross-encoder (imported lazily: torch is heavy).

See :mod:`newarrivals.ranker.student.model` for the model; this module only holds the layers.
Post-LayerNorm BERT blocks (attention, GELU feed-forward), with the attention's keys and
values exposed so a request's context can be encoded once and reused for every candidate.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = ["SharedContextEncoder"]


class _Embeddings(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, types: torch.Tensor
    ) -> torch.Tensor:
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(types)
        )
        out: torch.Tensor = self.dropout(self.LayerNorm(x))
        return out


class _Layer(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.heads = int(cfg.num_heads)
        self.head_dim = int(cfg.hidden_size) // self.heads
        h, i = int(cfg.hidden_size), int(cfg.intermediate_size)
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attention_output = nn.Linear(h, h)
        self.attention_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(h, i)
        self.output = nn.Linear(i, h)
        self.output_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``x`` ``(batch, seq, hidden)``, each ``(batch, heads, seq, dim)``."""
        return self._split(self.key(x)), self._split(self.value(x))

    def forward(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        b, s, h = x.shape
        attended = F.scaled_dot_product_attention(self._split(self.query(x)), keys, values, mask)
        merged = attended.transpose(1, 2).reshape(b, s, h)
        x = self.attention_norm(x + self.dropout(self.attention_output(merged)))
        ff = self.output(F.gelu(self.intermediate(x)))
        out: torch.Tensor = self.output_norm(x + self.dropout(ff))
        return out


class SharedContextEncoder(nn.Module):
    """A pair encoder whose context tokens never attend to the candidate.

    ``forward`` scores ``[CLS] context [SEP] candidate [SEP]`` pairs (segment 0 / 1) with
    that attention mask; :meth:`context_keys_values` + :meth:`candidate_scores` compute
    the very same scores with the context encoded once for all candidates.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(int(cfg.num_layers)))
        self.pooler = nn.Linear(int(cfg.hidden_size), int(cfg.hidden_size))
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(int(cfg.hidden_size), 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def _blocks(self) -> list[_Layer]:
        return [cast(_Layer, layer) for layer in self.layers]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def _score(self, x: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
        weights = candidate_mask.to(x.dtype).unsqueeze(-1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        hidden = torch.tanh(self.pooler(pooled))
        scores: torch.Tensor = self.classifier(self.dropout(hidden))[:, 0]
        return scores

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Raw scores ``(batch,)`` of padded pairs (training and batch evaluation)."""
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        x = self.embeddings(input_ids, positions, token_type_ids)
        valid = attention_mask.bool()
        candidate = token_type_ids.bool()
        # Query j may see key k when k is a real token and (j is a candidate token or k is
        # a context token): the context is encoded as if alone.
        mask = valid[:, None, None, :] & (
            candidate[:, None, :, None] | ~candidate[:, None, None, :]
        )
        for layer in self._blocks():
            keys, values = layer.keys_values(x)
            x = layer(x, keys, values, mask)
        return self._score(x, valid & candidate)

    def context_keys_values(self, context_ids: torch.Tensor) -> torch.Tensor:
        """Per-layer keys and values of one context ``(1, Lc)``: ``(layers, 2, heads, Lc, dim)``."""
        seq = context_ids.shape[1]
        positions = torch.arange(seq, device=context_ids.device).unsqueeze(0)
        x = self.embeddings(context_ids, positions, torch.zeros_like(context_ids))
        cached = []
        for layer in self._blocks():
            keys, values = layer.keys_values(x)
            cached.append(torch.stack([keys[0], values[0]]))
            x = layer(x, keys, values, None)
        return torch.stack(cached)

    def candidate_scores(
        self,
        candidate_ids: torch.Tensor,
        candidate_mask: torch.Tensor,
        context_kv: torch.Tensor,
    ) -> torch.Tensor:
        """Raw scores ``(batch,)`` of candidates ``candidate [SEP]`` against a cached context."""
        batch, seq = candidate_ids.shape
        start = context_kv.shape[3]
        positions = torch.arange(seq, device=candidate_ids.device).unsqueeze(0) + start
        x = self.embeddings(candidate_ids, positions, torch.ones_like(candidate_ids))
        valid = candidate_mask.bool()
        context_ok = torch.ones(batch, start, dtype=torch.bool, device=candidate_ids.device)
        mask = torch.cat([context_ok, valid], dim=1)[:, None, None, :]
        for i, layer in enumerate(self._blocks()):
            keys, values = layer.keys_values(x)
            shape = (batch, *context_kv.shape[2:])
            keys = torch.cat([context_kv[i, 0].unsqueeze(0).expand(shape), keys], dim=2)
            values = torch.cat([context_kv[i, 1].unsqueeze(0).expand(shape), values], dim=2)
            x = layer(x, keys, values, mask)
        return self._score(x, valid)
