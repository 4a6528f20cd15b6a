"""The ONNX copy of the text encoder: export it with its tokenizer, verify, encode."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from newarrivals.indexer.encoders.base import file_digest, l2_normalize
from newarrivals.indexer.encoders.onnx_encoders.common import (
    MODEL_FILE,
    TEXT_TOLERANCE,
    TOKENIZER_FILE,
    OnnxExport,
    export_folder,
    keep_if_verified,
    quiet_tracing,
    read_meta,
)

if TYPE_CHECKING:
    from newarrivals.indexer.encoders.text import TextEncoder

__all__ = ["OnnxTextEncoder", "export_text", "load_text_export"]

logger = logging.getLogger(__name__)


class OnnxTextEncoder(OnnxExport):
    """The ONNX copy of a sentence-transformers text encoder (same ``encoder_id``).

    Example:
        >>> enc = load_text_export(Path("index/cache"), text_encoder.encoder_id)  # doctest: +SKIP
        >>> enc.encode(["red striped t-shirt"]).shape  # doctest: +SKIP
        (1, 384)
    """

    @cached_property
    def _tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        tok.enable_truncation(max_length=int(self.meta["max_seq_length"]))
        tok.enable_padding(pad_id=int(self.meta["pad_id"]), pad_token=str(self.meta["pad_token"]))
        return tok

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Encode texts; returns an ``(n, dim)`` float32 array of unit vectors."""
        del progress  # a refresh encodes few texts; the build shows its own progress bar
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bs = int(self.meta["batch_size"])
        for start in range(0, len(texts), bs):
            # sentence-transformers strips surrounding whitespace before tokenising.
            batch = [str(t).strip() for t in texts[start : start + bs]]
            encodings = self._tokenizer.encode_batch(batch)
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            wanted = {name: feeds[name] for name in self.meta["inputs"]}
            out[start : start + len(batch)] = self.session.run(None, wanted)[0]
        return l2_normalize(out)


def load_text_export(
    cache_root: Path, encoder_id: str, *, threads: int | None = None
) -> OnnxTextEncoder | None:
    """The verified ONNX copy of a text encoder in this cache, or ``None``."""
    folder = export_folder(cache_root, encoder_id)
    meta = read_meta(folder, encoder_id, "text")
    return OnnxTextEncoder(folder, meta, threads=threads) if meta else None


def export_text(encoder: TextEncoder, cache_root: Path, probe: Sequence[str]) -> Path | None:
    """Write a verified ONNX copy of a loaded text encoder; ``None`` when it can't be made.

    Args:
        encoder: the torch encoder (its model is loaded if it isn't yet).
        cache_root: the embedding cache the copy goes into.
        probe: real texts the copy must reproduce within :data:`TEXT_TOLERANCE`.
    """
    import torch

    st = encoder.model
    tokenizer = st.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.pad_token is None:
        logger.info("text model %s has no fast tokenizer with padding: no ONNX copy", encoder)
        return None
    max_len = st.max_seq_length
    if max_len is None:
        logger.info("text model %s has no token limit to replay: no ONNX copy", encoder)
        return None
    sample = [t for t in probe if t.strip()][:64] or ["a product"]
    features = st.preprocess(sample[:2])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features]
    if names[:2] != ["input_ids", "attention_mask"]:
        logger.info("text model inputs %s are not BERT-like: no ONNX copy", list(features))
        return None

    class _Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.st(dict(zip(names, tensors, strict=True)))[
                "sentence_embedding"
            ]
            return out

    folder = export_folder(cache_root, encoder.encoder_id)
    tmp = folder.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"embedding": {0: "batch"}}
        with torch.inference_mode(False), torch.no_grad(), quiet_tracing():
            torch.onnx.export(
                _Wrapped().eval(),
                tuple(features[n].to(st.device) for n in names),
                str(tmp / MODEL_FILE),
                input_names=names,
                output_names=["embedding"],
                dynamic_axes=axes,
                dynamo=False,
                opset_version=17,
            )
        backend.save(str(tmp / TOKENIZER_FILE))
        meta: dict[str, Any] = {
            "kind": "text",
            "encoder_id": encoder.encoder_id,
            "dim": encoder.dim,
            "inputs": names,
            "max_seq_length": int(max_len),
            "pad_id": int(tokenizer.pad_token_id),
            "pad_token": str(tokenizer.pad_token),
            "batch_size": encoder.config.batch_size,
            "model_sha256": file_digest(tmp / MODEL_FILE),
            "verified": False,
        }
        candidate = OnnxTextEncoder(tmp, meta, threads=None)
        # Mixed lengths in one batch and a lone text: padding must not change a vector.
        diff = max(
            float(np.abs(candidate.encode(sample) - encoder.encode(sample)).max()),
            float(np.abs(candidate.encode(sample[-1:]) - encoder.encode(sample[-1:])).max()),
        )
        return keep_if_verified(tmp, folder, meta, diff, TEXT_TOLERANCE)
    except Exception as exc:  # an export failure must never fail the build that asked for it
        shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("could not export %s to ONNX (%s); torch stays in use", encoder, exc)
        return None
