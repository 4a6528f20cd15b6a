"""A cross-encoder whose user context is encoded once per request, not once per candidate.

In a plain cross-encoder every (context, candidate) pair runs the whole encoder, so with a
48-token context and 24-token candidates about two thirds of a request's work re-encodes
the same context 50 times. Here the context tokens attend only to the context (the
candidate tokens still attend to context and candidate in every layer), so the context's
keys and values in each layer do not depend on the candidate: a request encodes the
context once (``[CLS] context [SEP]``), then all candidates (``candidate [SEP]``) in one
batch against those cached keys and values -- a third of the token work. This is the
shared-prefix trick of LLM serving applied to a cross-encoder (as in PreTTR-style
rankers); the student learns under that attention mask, so nothing is approximated at
serving time: :meth:`SharedContextRanker.forward` (pairs, for training) and
:meth:`SharedContextRanker.raw_scores` (context once) give the same scores.

The score is a tanh-dense-linear head on the mean of the candidate's final states. The
model is a small post-LayerNorm BERT (embeddings, attention, GELU feed-forward) written
out in :mod:`newarrivals.ranker.student.network`, so its keys and values can be reused.

Artifacts: ``model.safetensors``, ``shared_context_config.json``, the tokenizer files and
``ranker.json`` (``kind: shared-context-ranker``). ONNX: two graphs per precision, the
context encoder and the candidate scorer (``kind: onnx-shared-context-ranker``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from newarrivals.indexer.errors import ConfigError, IndexIntegrityError
from newarrivals.indexer.validation import require_fraction, require_int, require_known_fields
from newarrivals.ranker.base import DEFAULT_CACHE_SIZE
from newarrivals.ranker.config import RankerConfig
from newarrivals.ranker.context import PairBatch, UserContext
from newarrivals.ranker.crossencoder.model import (
    TorchPairRanker,
    read_manifest,
)

if TYPE_CHECKING:
    import torch
from newarrivals.indexer.arrays import F64Array, I64Array
from newarrivals.ranker.student.network import SharedContextEncoder

__all__ = [
    "CONFIG_FILE",
    "SHARED_KIND",
    "WEIGHTS_FILE",
    "SharedContextConfig",
    "SharedContextRanker",
]

logger = logging.getLogger(__name__)


SHARED_KIND: Final = "shared-context-ranker"


CONFIG_FILE: Final = "shared_context_config.json"


WEIGHTS_FILE: Final = "model.safetensors"


@dataclass(frozen=True)
class SharedContextConfig:
    """Shape of a shared-context encoder (field names follow Hugging Face's ``BertConfig``).

    Example:
        >>> SharedContextConfig(vocab_size=30522, hidden_size=128, num_heads=2).head_dim
        64
    """

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            require_int(name, getattr(self, name))
        require_int("max_position_embeddings", self.max_position_embeddings, minimum=8)
        require_int("type_vocab_size", self.type_vocab_size, minimum=2)
        require_int("pad_token_id", self.pad_token_id, minimum=0)
        require_fraction("dropout", self.dropout, below_one=True)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                f"({self.num_heads})."
            )

    # The names TorchPairRanker reads from a Hugging Face config.
    @property
    def model_type(self) -> str:
        return "shared-context"

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers

    @property
    def num_attention_heads(self) -> int:
        return self.num_heads

    @property
    def num_labels(self) -> int:
        return 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SharedContextConfig:
        require_known_fields(cls, data)
        return cls(**dict(data))


def context_array(tokenizer: Any, context: UserContext) -> I64Array:
    """``[CLS] context [SEP]`` as a ``(1, Lc)`` array."""
    ids = [tokenizer.cls_token_id, *context.token_ids, tokenizer.sep_token_id]
    return np.asarray([ids], dtype=np.int64)


def candidate_arrays(
    tokenizer: Any, candidate_ids: Sequence[Sequence[int]]
) -> tuple[I64Array, I64Array]:
    """``candidate [SEP]`` per row, right-padded, and its mask, ``(n, Ld)`` each."""
    width = max((len(c) + 1 for c in candidate_ids), default=1)
    ids = np.full((len(candidate_ids), width), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(candidate_ids), width), dtype=np.int64)
    for row, cand in enumerate(candidate_ids):
        ids[row, : len(cand) + 1] = [*cand, tokenizer.sep_token_id]
        mask[row, : len(cand) + 1] = 1
    return ids, mask


class SharedContextRanker(TorchPairRanker):
    """A torch shared-context ranker (a distilled student; see the module docstring).

    Example:
        >>> ranker = SharedContextRanker.create(shape, tokenizer, RankerConfig())  # doctest: +SKIP
        >>> context = ranker.encode_context(recent)  # doctest: +SKIP
        >>> ranked = ranker.rank(context, candidates, products)  # doctest: +SKIP
    """

    @classmethod
    def create(
        cls,
        shape: SharedContextConfig,
        tokenizer: Any,
        config: RankerConfig,
        *,
        seed: int = 0,
        device: str = "cpu",
    ) -> SharedContextRanker:
        """A new, randomly initialised model of ``shape`` reading ``tokenizer``'s vocabulary."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SharedContextEncoder(shape)
        return cls(model, tokenizer, config, device=device)

    @classmethod
    def load(
        cls, directory: Path, *, device: str = "cpu", cache_size: int = DEFAULT_CACHE_SIZE
    ) -> SharedContextRanker:
        """Load an artifact written by :meth:`save`.

        Raises:
            ConfigError: when ``directory`` is not a shared-context ranker artifact.
            IndexIntegrityError: when the weights do not fit the recorded shape.
        """
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.get("kind") != SHARED_KIND:
            raise ConfigError(
                f"{directory} holds a {manifest.get('kind')!r} ranker, not a shared-context "
                "one; load it with newarrivals.ranker.load_ranker."
            )
        shape = SharedContextConfig.from_dict(
            json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        )
        model = SharedContextEncoder(shape)
        try:
            model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
        except RuntimeError as exc:
            raise IndexIntegrityError(
                f"{directory}: the weights do not fit {CONFIG_FILE} ({exc})."
            ) from None
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        logger.info("loaded shared-context ranker %s (%d layers)", directory, shape.num_layers)
        return cls(
            model,
            tokenizer,
            RankerConfig.from_dict(manifest["config"]),
            temperature=float(manifest["temperature"]),
            device=device,
            cache_size=cache_size,
        )

    def save(self, directory: Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the artifact into ``directory`` (created; files overwritten)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self._model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(
            json.dumps(self.shape.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        self._tokenizer.save_pretrained(str(directory))
        return self._write_manifest(directory, SHARED_KIND, extra)

    @property
    def shape(self) -> SharedContextConfig:
        shape: SharedContextConfig = self._model.config
        return shape

    def forward(self, batch: PairBatch) -> torch.Tensor:
        """Raw scores of pairs under the shared-context mask, with autograd (training)."""
        import torch

        scores: torch.Tensor = self._model(
            torch.from_numpy(batch.input_ids).to(self._device),
            torch.from_numpy(batch.attention_mask).to(self._device),
            torch.from_numpy(batch.token_type_ids).to(self._device),
        )
        return scores

    def raw_scores(self, context: UserContext, candidate_ids: Sequence[Sequence[int]]) -> F64Array:
        """One request: the context encoded once, every candidate against it in one batch."""
        import torch

        ctx = torch.from_numpy(context_array(self._tokenizer, context)).to(self._device)
        ids, mask = candidate_arrays(self._tokenizer, candidate_ids)
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.inference_mode():
                kv = self._model.context_keys_values(ctx)
                out = self._model.candidate_scores(
                    torch.from_numpy(ids).to(self._device),
                    torch.from_numpy(mask).to(self._device),
                    kv,
                )
        finally:
            self._model.train(was_training)
        scores: F64Array = out.float().cpu().numpy().astype(np.float64)
        return scores
