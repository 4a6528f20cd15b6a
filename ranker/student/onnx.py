"""The shared-context ranker under ONNX Runtime: export and serving.

Two graphs per precision, the context encoder and the candidate scorer
(``kind: onnx-shared-context-ranker``), checked against torch at export; the served ranker
runs the context graph once per request and the candidate graph once per candidate batch.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from newarrivals.indexer.errors import IndexIntegrityError
from newarrivals.ranker.base import DEFAULT_CACHE_SIZE, PairRanker
from newarrivals.ranker.config import RankerConfig
from newarrivals.ranker.context import PairBatch, UserContext
from newarrivals.ranker.crossencoder.model import (
    FORMAT_VERSION,
    MANIFEST_FILE,
)

if TYPE_CHECKING:
    import onnxruntime
    import torch
from newarrivals.indexer.arrays import F64Array, I64Array
from newarrivals.ranker.onnx_sessions import onnx_graphs, session_options
from newarrivals.ranker.student.model import SharedContextRanker, candidate_arrays, context_array
from newarrivals.ranker.versions import onnx_library_versions

__all__ = [
    "EXPORT_TOLERANCE",
    "GRAPH_FILES",
    "ONNX_SHARED_KIND",
    "OnnxSharedContextRanker",
    "export_shared_onnx",
]

logger = logging.getLogger(__name__)


ONNX_SHARED_KIND: Final = "onnx-shared-context-ranker"


GRAPH_FILES: Final = {
    "fp32": ("context.onnx", "candidates.onnx"),
    "int8": ("context.int8.onnx", "candidates.int8.onnx"),
}


#: Largest |onnx - torch| raw-score difference the fp32 export may show.
EXPORT_TOLERANCE: Final = 1e-3


def _graph_modules(model: Any) -> tuple[Any, Any]:
    import torch

    class Context(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, context_ids: torch.Tensor) -> torch.Tensor:
            kv: torch.Tensor = self.inner.context_keys_values(context_ids)  # type: ignore[operator]
            return kv

    class Candidates(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self,
            candidate_ids: torch.Tensor,
            candidate_mask: torch.Tensor,
            context_kv: torch.Tensor,
        ) -> torch.Tensor:
            scores: torch.Tensor = self.inner.candidate_scores(  # type: ignore[operator]
                candidate_ids, candidate_mask, context_kv
            )
            return scores

    return Context(model).eval(), Candidates(model).eval()


def export_shared_onnx(
    ranker: SharedContextRanker,
    directory: Path,
    *,
    precisions: Sequence[str],
    default_precision: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``ranker`` as two ONNX graphs per precision (see :func:`~newarrivals.ranker.
    runtime.export_onnx`, which validates the arguments and calls this)."""
    import onnxruntime
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocab = ranker.shape.vocab_size
    context = UserContext(
        text="", token_ids=tuple(rng.integers(1000, vocab, ranker.config.context_tokens).tolist())
    )
    cands = [
        rng.integers(1000, vocab, n).tolist()
        for n in (ranker.config.candidate_tokens, 1, ranker.config.candidate_tokens // 2, 5)
    ]
    want = ranker.raw_scores(context, cands)
    ctx = context_array(ranker.tokenizer, context)
    ids, mask = candidate_arrays(ranker.tokenizer, cands)
    model = ranker.torch_model
    was_training = model.training
    models: dict[str, dict[str, Any]] = {}
    try:
        context_module, candidate_module = _graph_modules(model.to("cpu").eval())
        with torch.inference_mode():
            kv = context_module(torch.from_numpy(ctx))
        batch, cand_len, ctx_len = (torch.export.Dim(n) for n in ("batch", "cand_len", "ctx_len"))
        with tempfile.TemporaryDirectory() as tmp:
            paths = (Path(tmp) / "context.onnx", Path(tmp) / "candidates.onnx")
            programs = (
                torch.onnx.export(
                    context_module,
                    (torch.from_numpy(ctx),),
                    input_names=["context_ids"],
                    output_names=["context_kv"],
                    dynamic_shapes={"context_ids": {1: ctx_len}},
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                ),
                torch.onnx.export(
                    candidate_module,
                    (torch.from_numpy(ids), torch.from_numpy(mask), kv.clone()),
                    input_names=["candidate_ids", "candidate_mask", "context_kv"],
                    output_names=["scores"],
                    dynamic_shapes={
                        "candidate_ids": {0: batch, 1: cand_len},
                        "candidate_mask": {0: batch, 1: cand_len},
                        "context_kv": {3: ctx_len},
                    },
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                ),
            )
            for program, path in zip(programs, paths, strict=True):
                if program is None:
                    raise IndexIntegrityError("torch.onnx.export returned no program.")
                program.save(str(path))
            for precision in precisions:
                targets = tuple(directory / name for name in GRAPH_FILES[precision])
                for source, target in zip(paths, targets, strict=True):
                    if precision == "int8":
                        from onnxruntime.quantization import QuantType, quantize_dynamic

                        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
                    else:
                        target.write_bytes(source.read_bytes())
                sessions = tuple(
                    onnxruntime.InferenceSession(
                        str(t), session_options(1), providers=["CPUExecutionProvider"]
                    )
                    for t in targets
                )
                got = _run(sessions, ctx, ids, mask)
                max_diff = float(np.max(np.abs(got - want)))
                if precision == "fp32" and not max_diff <= EXPORT_TOLERANCE:
                    raise IndexIntegrityError(
                        f"the exported graphs' scores differ from torch's by {max_diff:.2e} "
                        f"(> {EXPORT_TOLERANCE:.0e}); the export is wrong, do not serve it."
                    )
                models[precision] = {
                    "context": GRAPH_FILES[precision][0],
                    "candidates": GRAPH_FILES[precision][1],
                    "max_abs_diff_vs_torch": max_diff,
                }
                logger.info(
                    "exported %s shared-context ONNX ranker to %s (max |onnx - torch| %.2e)",
                    precision,
                    directory,
                    max_diff,
                )
    finally:
        model.to(ranker.device)
        model.train(was_training)
    ranker.tokenizer.save_pretrained(str(directory))
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": ONNX_SHARED_KIND,
        "config": ranker.config.to_dict(),
        "num_layers": ranker.num_layers,
        "architecture": ranker.architecture,
        "shape": ranker.shape.to_dict(),
        "temperature": ranker.temperature,
        "models": models,
        "default_precision": default_precision,
        "created_at": datetime.now(UTC).isoformat(),
        "library_versions": onnx_library_versions(),
    }
    if extra is not None:
        manifest["training"] = dict(extra)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def _run(
    sessions: tuple[onnxruntime.InferenceSession, onnxruntime.InferenceSession],
    context: I64Array,
    ids: I64Array,
    mask: I64Array,
) -> F64Array:
    kv = sessions[0].run(None, {"context_ids": context})[0]
    out = sessions[1].run(None, {"candidate_ids": ids, "candidate_mask": mask, "context_kv": kv})[0]
    scores: F64Array = np.asarray(out, dtype=np.float64).reshape(-1)
    return scores


class OnnxSharedContextRanker(PairRanker):
    """A shared-context ranker in ONNX Runtime: context graph once, candidate graph once."""

    def __init__(
        self,
        sessions: tuple[onnxruntime.InferenceSession, onnxruntime.InferenceSession],
        tokenizer: Any,
        config: RankerConfig,
        *,
        temperature: float = 1.0,
        precision: str = "fp32",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__(tokenizer, config, temperature=temperature, cache_size=cache_size)
        self._sessions = sessions
        self._precision = precision

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        precision: str | None = None,
        threads: int | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> OnnxSharedContextRanker:
        """Open an artifact written by :func:`export_shared_onnx`.

        Raises:
            ConfigError: when ``directory`` is not one, or lacks ``precision``.
            IndexIntegrityError: when a graph file is missing.
        """
        import onnxruntime
        from transformers import AutoTokenizer

        directory = Path(directory)
        manifest, chosen, paths = onnx_graphs(
            directory, ONNX_SHARED_KIND, precision, ("context", "candidates")
        )
        options = session_options(threads)
        sessions = (
            onnxruntime.InferenceSession(
                str(paths[0]), options, providers=["CPUExecutionProvider"]
            ),
            onnxruntime.InferenceSession(
                str(paths[1]), options, providers=["CPUExecutionProvider"]
            ),
        )
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        return cls(
            sessions,
            tokenizer,
            RankerConfig.from_dict(manifest["config"]),
            temperature=float(manifest["temperature"]),
            precision=chosen,
            cache_size=cache_size,
        )

    @property
    def precision(self) -> str:
        return self._precision

    def raw_scores(self, context: UserContext, candidate_ids: Sequence[Sequence[int]]) -> F64Array:
        ids, mask = candidate_arrays(self._tokenizer, candidate_ids)
        return _run(self._sessions, context_array(self._tokenizer, context), ids, mask)

    def score_batch(self, batch: PairBatch) -> F64Array:
        """Raw scores of a pair batch: rows grouped by context, each group one request."""
        out = np.zeros(len(batch), dtype=np.float64)
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for row in range(len(batch)):
            length = int(batch.attention_mask[row].sum())
            types = batch.token_type_ids[row, :length]
            first = int(np.argmax(types)) if types.any() else length
            ids = batch.input_ids[row].tolist()
            groups.setdefault(tuple(ids[1 : first - 1]), []).append((row, ids[first : length - 1]))
        for context_ids, rows in groups.items():
            context = UserContext(text="", token_ids=context_ids)
            scores = self.raw_scores(context, [cand for _, cand in rows])
            out[[row for row, _ in rows]] = scores
        return out
