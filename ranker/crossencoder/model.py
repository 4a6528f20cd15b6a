"""The cross-encoder ranker: reads (user context, candidate) pairs and re-orders candidates.

The model is a BERT-style encoder (MiniLM by default) with a fresh 1-logit head
(``AutoModelForSequenceClassification`` with ``num_labels=1``). For one request it scores
every candidate in **one** batched forward pass and turns the raw scores ``z`` into a
softmax over the candidate list, ``p_i = exp(z_i / T) / sum_j exp(z_j / T)``, with the
temperature ``T`` fitted on validation lists (:mod:`newarrivals.ranker.training.metrics`).

The request path (context tokenised once, per-product candidate token cache, one batched
pass, softmax) lives in :class:`~newarrivals.ranker.base.PairRanker`, shared with the ONNX
Runtime ranker (:mod:`newarrivals.ranker.loading`); this module adds the torch forward pass.

An artifact is a directory: ``model.safetensors`` + ``config.json`` (the Hugging Face
model, truncated to ``num_layers``, or a distilled student), the tokenizer files, and
``ranker.json`` (``kind``, ranker config, architecture, temperature, library versions,
creation time). No pickles.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.encoders.text import BUNDLED_MINILM, bundled_minilm_path
from newarrivals.indexer.errors import ConfigError, IndexIntegrityError
from newarrivals.ranker.base import (
    DEFAULT_CACHE_SIZE,
    PairRanker,
)
from newarrivals.ranker.config import RankerConfig
from newarrivals.ranker.context import PairBatch
from newarrivals.ranker.versions import ranker_library_versions

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "TORCH_KIND",
    "CrossEncoderRanker",
    "TorchPairRanker",
    "pair_scores",
    "read_manifest",
]

logger = logging.getLogger(__name__)


MANIFEST_FILE: Final = "ranker.json"


FORMAT_VERSION: Final = 1


#: ``kind`` in the manifest of a torch (``transformers``) ranker, teacher or student.
TORCH_KIND: Final = "cross-encoder-ranker"


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a ranker artifact, its format version checked.

    Raises:
        ConfigError: when ``directory`` holds no ranker manifest.
        IndexIntegrityError: for a format this code cannot read.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ConfigError(
            f"{directory} is not a ranker artifact (no {MANIFEST_FILE}); write one with "
            "`newarrivals train-ranker` or `newarrivals distill-ranker`."
        )
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexIntegrityError(
            f"{directory} has ranker format {manifest.get('format_version')}, this code "
            f"reads {FORMAT_VERSION}; retrain with this version of newarrivals."
        )
    return manifest


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


def _load_encoder_weights(encoder: Any, weights: Path) -> None:
    """Load a base checkpoint's weights into ``encoder`` (truncated or not).

    Done here rather than by ``from_pretrained``, which prints a table of every key of the
    dropped layers and the new head on each first run. The check that matters is kept:
    every weight of ``encoder`` must come from the checkpoint (the dropped layers, a legacy
    ``position_ids`` buffer or another head's weights are simply not read).

    Raises:
        ConfigError: when the checkpoint lacks weights the encoder needs.
    """
    from safetensors.torch import load_file

    prefix = f"{getattr(encoder, 'base_model_prefix', '')}."
    state = {key.removeprefix(prefix): value for key, value in load_file(str(weights)).items()}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError(
            f"{weights} lacks {len(missing)} weights a {type(encoder).__name__} needs (e.g. "
            f"{missing[:3]}); pass the directory of a BERT-style encoder as base_model."
        )
    encoder.load_state_dict({key: state[key] for key in own})


class TorchPairRanker(PairRanker):
    """A ranker whose forward pass is a torch module (a teacher or a distilled student).

    Subclasses define :meth:`forward` (raw scores of a pair batch, with autograd, for
    training) and how the artifact is written and read.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: RankerConfig,
        *,
        temperature: float = 1.0,
        device: str = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__(tokenizer, config, temperature=temperature, cache_size=cache_size)
        self._model = model.to(device)
        self._model.eval()
        self._device = device
        max_positions = int(getattr(model.config, "max_position_embeddings", 512))
        if config.max_pair_tokens > max_positions:
            raise ConfigError(
                f"context_tokens + candidate_tokens + 3 = {config.max_pair_tokens} exceeds the "
                f"model's {max_positions} positions; lower the token budgets."
            )

    def _write_manifest(
        self,
        directory: Path,
        kind: str,
        extra: Mapping[str, Any] | None,
        fields: Mapping[str, Any] | None = None,
    ) -> Path:
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "config": self._config.to_dict(),
            "num_layers": self.num_layers,
            "architecture": self.architecture,
            "temperature": self.temperature,
            "weights": "model.safetensors",
            **(fields or {}),
            "created_at": datetime.now(UTC).isoformat(),
            "library_versions": ranker_library_versions(),
        }
        if extra is not None:
            manifest["training"] = dict(extra)
        (directory / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
        )
        return directory

    # -- properties -----------------------------------------------------------------

    @property
    def device(self) -> str:
        return self._device

    @property
    def num_layers(self) -> int:
        return int(self._model.config.num_hidden_layers)

    @property
    def architecture(self) -> dict[str, Any]:
        """Size of the encoder: layers, hidden and intermediate width, heads, parameters."""
        cfg = self._model.config
        return {
            "model_type": str(getattr(cfg, "model_type", "")),
            "num_layers": self.num_layers,
            "hidden_size": int(cfg.hidden_size),
            "intermediate_size": int(getattr(cfg, "intermediate_size", 0)),
            "num_attention_heads": int(getattr(cfg, "num_attention_heads", 0)),
            "max_position_embeddings": int(getattr(cfg, "max_position_embeddings", 0)),
            "parameters": int(sum(p.numel() for p in self._model.parameters())),
        }

    @property
    def torch_model(self) -> torch.nn.Module:
        """The underlying torch module (for training)."""
        module: torch.nn.Module = self._model
        return module

    @abstractmethod
    def save(self, directory: Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the artifact into ``directory``; ``extra`` goes to the manifest."""

    # -- scoring --------------------------------------------------------------------

    @abstractmethod
    def forward(self, batch: PairBatch) -> torch.Tensor:
        """Raw scores, shape ``(len(batch),)``, with autograd (the caller picks the mode)."""

    def score_batch(self, batch: PairBatch) -> F64Array:
        """Raw scores of a prepared batch in eval mode, without autograd."""
        import torch

        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        was_training = self._model.training
        if was_training:
            self._model.eval()
        try:
            with torch.inference_mode():
                out = self.forward(batch)
        finally:
            if was_training:
                self._model.train()
        scores: F64Array = out.float().cpu().numpy().astype(np.float64)
        return scores


class CrossEncoderRanker(TorchPairRanker):
    """Re-scores retrieval candidates for one user with a ``transformers`` cross-encoder.

    Build it with :meth:`from_base` (new head on MiniLM or a local model), wrap any 1-logit
    ``transformers`` sequence classifier (a distilled student), or :meth:`load` it. The
    request path (context once, cached candidate tokens, one batched pass, softmax) is
    :class:`~newarrivals.ranker.base.PairRanker`'s.

    Example:
        >>> ranker = CrossEncoderRanker.from_base(RankerConfig(num_layers=2))  # doctest: +SKIP
        >>> context = ranker.encode_context([products["p1"], products["p7"]])  # doctest: +SKIP
        >>> ranked = ranker.rank(context, candidates, products)  # doctest: +SKIP
        >>> sum(c.probability for c in ranked)  # doctest: +SKIP
        1.0
    """

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
        weights = path / "model.safetensors"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if weights.is_file():
                model = AutoModelForSequenceClassification.from_config(hf_config)  # type: ignore[no-untyped-call]
                _load_encoder_weights(model.base_model, weights)
                model.eval()
            else:
                model = AutoModelForSequenceClassification.from_pretrained(
                    str(path), config=hf_config, local_files_only=True
                )
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return cls(model, tokenizer, config, device=device)

    @classmethod
    def load(
        cls, directory: Path, *, device: str = "cpu", cache_size: int = DEFAULT_CACHE_SIZE
    ) -> CrossEncoderRanker:
        """Load an artifact written by :meth:`save` and check it against its manifest.

        Raises:
            ConfigError: when ``directory`` is not a torch ranker artifact.
            IndexIntegrityError: when the manifest and the weights disagree (naming both).
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        manifest = read_manifest(directory)
        kind = manifest.get("kind", TORCH_KIND)
        if kind != TORCH_KIND:
            raise ConfigError(
                f"{directory} holds a {kind!r} ranker, not a torch one; load it with "
                "newarrivals.ranker.load_ranker."
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
            model,
            tokenizer,
            config,
            temperature=float(manifest["temperature"]),
            device=device,
            cache_size=cache_size,
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
        return self._write_manifest(directory, TORCH_KIND, extra)

    def forward(self, batch: PairBatch) -> torch.Tensor:
        """Raw logits, shape ``(len(batch),)``, with autograd (the caller picks the mode)."""
        import torch

        return pair_scores(
            self._model,
            torch.from_numpy(batch.input_ids).to(self._device),
            torch.from_numpy(batch.attention_mask).to(self._device),
            torch.from_numpy(batch.token_type_ids).to(self._device),
        )


def pair_scores(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
) -> torch.Tensor:
    """The one definition of a pair's raw score: the model's 1-logit head, ``(batch,)``.

    :meth:`CrossEncoderRanker.forward` and the ONNX export
    (:func:`newarrivals.ranker.loading.export_onnx`) both call this, so a change to how
    pairs are scored (pooling, head) reaches every runtime.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    logits: torch.Tensor = out.logits[:, 0]
    return logits
