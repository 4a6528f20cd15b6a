"""The cross-encoder ranker: reads (user context, candidate) pairs and re-orders candidates.

The model is a BERT-style encoder (MiniLM by default) with a fresh 1-logit head
(``AutoModelForSequenceClassification`` with ``num_labels=1``). For one request it scores
every candidate in **one** batched forward pass and turns the raw scores ``z`` into a
softmax over the candidate list, ``p_i = exp(z_i / T) / sum_j exp(z_j / T)``, with the
temperature ``T`` fitted on validation lists (:mod:`newarrivals.ranker.trainer`).

An artifact is a directory: ``model.safetensors`` + ``config.json`` (the Hugging Face
model, truncated to ``num_layers``), the tokenizer files, and ``ranker.json`` (ranker
config, temperature, library versions, creation time). No pickles.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.encoders.text import BUNDLED_MINILM, bundled_minilm_path
from newarrivals.indexer.errors import (
    ConfigError,
    IndexIntegrityError,
    NewArrivalsError,
    UnknownProductError,
)
from newarrivals.indexer.schema import Product
from newarrivals.indexer.store import Candidate
from newarrivals.indexer.version import library_versions

from .config import RankerConfig
from .context import (
    PairBatch,
    UserContext,
    candidate_text,
    encode_context,
    encode_texts,
    pair_batch,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "MANIFEST_FILE",
    "CrossEncoderRanker",
    "RankingInputError",
    "ScoredCandidate",
    "softmax",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE: Final = "ranker.json"
FORMAT_VERSION: Final = 1

FloatArray = npt.NDArray[np.float64]


class RankingInputError(NewArrivalsError, ValueError):
    """A ranking request cannot be scored (e.g. an empty or duplicated candidate list)."""


@dataclass(frozen=True)
class ScoredCandidate:
    """One re-ranked candidate.

    Attributes:
        product_id: The product.
        probability: Its softmax probability over the request's candidate list.
        raw_score: The cross-encoder's logit ``z`` (before the temperature).
        retrieval_score: The retrieval stage's score it arrived with.
    """

    product_id: str
    probability: float
    raw_score: float
    retrieval_score: float


def softmax(scores: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """A numerically stable softmax of ``scores / temperature`` over the last axis."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


def _hf_model_dir(path: Path) -> Path:
    """The Hugging Face model directory inside ``path`` (a sentence-transformers dir or not)."""
    if (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "pytorch_model.bin").is_file()
    ):
        return path
    modules = path / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if str(module.get("type", "")).endswith("Transformer"):
                inner = path / str(module.get("path", ""))
                if (inner / "config.json").is_file():
                    return inner
    raise ConfigError(
        f"base_model {str(path)!r} holds no Hugging Face model (config.json + weights, "
        "directly or through a sentence-transformers modules.json); pass a model directory "
        f"or {BUNDLED_MINILM!r}."
    )


def _resolve_base(base_model: str) -> Path:
    if base_model == BUNDLED_MINILM:
        return bundled_minilm_path()
    path = Path(base_model)
    if not path.is_dir():
        raise ConfigError(
            f"base_model {base_model!r} is not a local directory; pass a model directory or "
            f"{BUNDLED_MINILM!r} (serving never downloads)."
        )
    return _hf_model_dir(path)


class CrossEncoderRanker:
    """Re-scores retrieval candidates for one user with a cross-encoder.

    Build it with :meth:`from_base` (new head on MiniLM or a local model) or :meth:`load`.

    Example:
        >>> ranker = CrossEncoderRanker.from_base(RankerConfig(num_layers=2))  # doctest: +SKIP
        >>> context = ranker.encode_context([products["p1"], products["p7"]])  # doctest: +SKIP
        >>> ranked = ranker.rank(context, candidates, products)  # doctest: +SKIP
        >>> sum(c.probability for c in ranked)  # doctest: +SKIP
        1.0
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: RankerConfig,
        *,
        temperature: float = 1.0,
        device: str = "cpu",
    ) -> None:
        self._model = model.to(device)
        self._model.eval()
        self._tokenizer = tokenizer
        self._config = config
        self._device = device
        self.temperature = temperature
        max_positions = int(getattr(model.config, "max_position_embeddings", 512))
        if config.max_pair_tokens > max_positions:
            raise ConfigError(
                f"context_tokens + candidate_tokens + 3 = {config.max_pair_tokens} exceeds the "
                f"model's {max_positions} positions; lower the token budgets."
            )

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_base(cls, config: RankerConfig, *, device: str = "cpu") -> CrossEncoderRanker:
        """The base encoder (truncated to ``config.num_layers``) with a new 1-logit head."""
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = _resolve_base(config.base_model)
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        available = int(hf_config.num_hidden_layers)
        if config.num_layers is not None:
            if config.num_layers > available:
                raise ConfigError(
                    f"num_layers is {config.num_layers} but {path} has only {available} "
                    f"layers; use num_layers <= {available} or None."
                )
            hf_config.num_hidden_layers = config.num_layers
        hf_config.num_labels = 1
        logger.info(
            "cross-encoder from %s: %d of %d layers, new 1-logit head, on %s",
            path,
            hf_config.num_hidden_layers,
            available,
            device,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), config=hf_config, local_files_only=True
            )
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return cls(model, tokenizer, config, device=device)

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu") -> CrossEncoderRanker:
        """Load an artifact written by :meth:`save` and check it against its manifest.

        Raises:
            IndexIntegrityError: when the manifest and the weights disagree (naming both).
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ConfigError(
                f"{directory} is not a ranker artifact (no {MANIFEST_FILE}); "
                "write one with CrossEncoderRanker.save or `newarrivals train-ranker`."
            )
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexIntegrityError(
                f"{directory} has ranker format {manifest.get('format_version')}, this code "
                f"reads {FORMAT_VERSION}; retrain with this version of newarrivals."
            )
        config = RankerConfig.from_dict(manifest["config"])
        model = AutoModelForSequenceClassification.from_pretrained(
            str(directory), local_files_only=True
        )
        layers = int(model.config.num_hidden_layers)
        if layers != manifest["num_layers"]:
            raise IndexIntegrityError(
                f"{directory}: the weights have {layers} encoder layers but the manifest "
                f"records {manifest['num_layers']}."
            )
        if int(model.config.num_labels) != 1:
            raise IndexIntegrityError(
                f"{directory}: the head has {model.config.num_labels} outputs, a ranker has 1."
            )
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        logger.info("loaded ranker %s (%d layers) on %s", directory, layers, device)
        return cls(
            model, tokenizer, config, temperature=float(manifest["temperature"]), device=device
        )

    def save(self, directory: Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the artifact into ``directory`` (created; files overwritten).

        Args:
            directory: Where to write.
            extra: JSON-ready data recorded in the manifest under ``"training"``.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._model.save_pretrained(str(directory), safe_serialization=True)
        self._tokenizer.save_pretrained(str(directory))
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": "cross-encoder-ranker",
            "config": self._config.to_dict(),
            "num_layers": self.num_layers,
            "temperature": self.temperature,
            "weights": "model.safetensors",
            "created_at": datetime.now(UTC).isoformat(),
            "library_versions": _ranker_library_versions(),
        }
        if extra is not None:
            manifest["training"] = dict(extra)
        (directory / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
        )
        return directory

    # -- properties -----------------------------------------------------------------

    @property
    def config(self) -> RankerConfig:
        return self._config

    @property
    def device(self) -> str:
        return self._device

    @property
    def num_layers(self) -> int:
        return int(self._model.config.num_hidden_layers)

    @property
    def torch_model(self) -> torch.nn.Module:
        """The underlying ``transformers`` model (for training)."""
        module: torch.nn.Module = self._model
        return module

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not np.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(f"temperature must be a finite number > 0, got {value!r}.")
        self._temperature = float(value)

    # -- text -----------------------------------------------------------------------

    def encode_context(self, recent: Sequence[Product]) -> UserContext:
        """Tokenise a user's context once per request (``recent`` newest first)."""
        return encode_context(
            self._tokenizer,
            recent,
            max_items=self._config.max_context_items,
            budget=self._config.context_tokens,
        )

    def encode_candidates(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of candidate texts, cut to the candidate budget."""
        return encode_texts(self._tokenizer, texts, self._config.candidate_tokens)

    def pairs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> PairBatch:
        """Model inputs for (context ids, candidate ids) pairs."""
        tok = self._tokenizer
        return pair_batch(
            pairs, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id, pad_id=tok.pad_token_id
        )

    # -- scoring --------------------------------------------------------------------

    def forward(self, batch: PairBatch) -> torch.Tensor:
        """Raw logits, shape ``(len(batch),)``, with autograd (the caller picks the mode)."""
        import torch

        inputs = {
            "input_ids": torch.from_numpy(batch.input_ids).to(self._device),
            "token_type_ids": torch.from_numpy(batch.token_type_ids).to(self._device),
            "attention_mask": torch.from_numpy(batch.attention_mask).to(self._device),
        }
        logits: torch.Tensor = self._model(**inputs).logits
        return logits.squeeze(-1)

    def score_batch(self, batch: PairBatch) -> FloatArray:
        """Raw scores of a prepared batch in eval mode, without autograd."""
        import torch

        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.inference_mode():
                out = self.forward(batch)
        finally:
            self._model.train(was_training)
        scores: FloatArray = out.float().cpu().numpy().astype(np.float64)
        return scores

    def score(self, context: UserContext, candidate_texts: Sequence[str]) -> FloatArray:
        """Raw scores of each candidate text for this context: one batched forward pass.

        Raises:
            RankingInputError: when there is no candidate.
        """
        if not candidate_texts:
            raise RankingInputError(
                "the candidate list is empty; pass the retrieval stage's candidates "
                "(at least one) to score."
            )
        cands = self.encode_candidates(candidate_texts)
        return self.score_batch(self.pairs([(context.token_ids, c) for c in cands]))

    def rank(
        self,
        context: UserContext,
        candidates: Sequence[Candidate],
        products: Mapping[str, Product],
    ) -> list[ScoredCandidate]:
        """Re-order retrieval candidates with softmax probabilities over the list.

        Args:
            context: The user's context from :meth:`encode_context`.
            candidates: The retrieval stage's candidates (ids and retrieval scores).
            products: The catalogue, to read each candidate's text.

        Returns:
            The candidates, most probable first (ties keep the retrieval order); the
            probabilities sum to 1.

        Raises:
            RankingInputError: for an empty list or a product listed twice.
            UnknownProductError: naming a candidate that is not in ``products``.
        """
        if not candidates:
            raise RankingInputError(
                "the candidate list is empty; retrieve candidates for the user first "
                "(retrieve_for_user or recommend_for_user) and pass at least one."
            )
        seen: set[str] = set()
        texts: list[str] = []
        for c in candidates:
            if c.product_id in seen:
                raise RankingInputError(
                    f"product {c.product_id!r} is listed twice among the candidates; "
                    "deduplicate the candidate list."
                )
            seen.add(c.product_id)
            product = products.get(c.product_id)
            if product is None:
                raise UnknownProductError(
                    f"candidate product {c.product_id!r} is not in the catalogue passed to "
                    "rank(); pass the catalogue the index was built from."
                )
            texts.append(candidate_text(product))
        raw = self.score(context, texts)
        probs = softmax(raw, self.temperature)
        order = np.argsort(-probs, kind="stable")
        return [
            ScoredCandidate(
                product_id=candidates[i].product_id,
                probability=float(probs[i]),
                raw_score=float(raw[i]),
                retrieval_score=float(candidates[i].score),
            )
            for i in order.tolist()
        ]


def _ranker_library_versions() -> dict[str, str]:
    from importlib import metadata

    found = library_versions()
    for name in ("transformers", "tokenizers", "safetensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
