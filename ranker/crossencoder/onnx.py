"""The cross-encoder under ONNX Runtime: export and serving.

:func:`export_crossencoder_onnx` writes a torch cross-encoder (teacher or BERT student) as an
ONNX graph with dynamic batch and sequence axes (``torch.onnx.export``, the ``dynamo``
exporter), optionally with dynamic int8 quantisation of the weights
(``onnxruntime.quantization.quantize_dynamic``), checks the graph's scores against torch
on a sample batch, and writes an artifact directory: one graph per precision
(``model.onnx``, ``model.int8.onnx``), the tokenizer files and ``ranker.json``
(``kind: onnx-cross-encoder-ranker``, the default precision, each graph's check).
:class:`OnnxRanker` serves it through the same request path as the torch ranker
(:class:`~newarrivals.ranker.base.PairRanker`). The graph computes
:func:`~newarrivals.ranker.crossencoder.model.pair_scores`, the same function as the torch
forward pass.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from newarrivals.indexer.errors import IndexIntegrityError
from newarrivals.ranker.base import DEFAULT_CACHE_SIZE, PairRanker
from newarrivals.ranker.config import RankerConfig
from newarrivals.ranker.context import PairBatch
from newarrivals.ranker.crossencoder.model import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    CrossEncoderRanker,
    pair_scores,
)

if TYPE_CHECKING:
    import onnxruntime
from newarrivals.indexer.arrays import F64Array
from newarrivals.ranker.onnx_sessions import onnx_graphs, require_onnx, session_options
from newarrivals.ranker.versions import onnx_library_versions

__all__ = [
    "EXPORT_TOLERANCE",
    "INPUT_NAMES",
    "MODEL_FILES",
    "ONNX_KIND",
    "OnnxRanker",
    "export_crossencoder_onnx",
]

logger = logging.getLogger(__name__)


#: ``kind`` in the manifest of an ONNX Runtime ranker.
ONNX_KIND: Final = "onnx-cross-encoder-ranker"


MODEL_FILES: Final = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


INPUT_NAMES: Final = ("input_ids", "attention_mask", "token_type_ids")


#: Largest |onnx - torch| raw-score difference an export may show on its check batch
#: (fp32; int8 changes scores by design and is reported, not checked).
EXPORT_TOLERANCE: Final = 1e-3


def _scores_module(model: Any) -> Any:
    """A module mapping the three input tensors, positionally, to ``(batch,)`` raw scores."""
    import torch

    class Scores(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            return pair_scores(self.inner, input_ids, attention_mask, token_type_ids)

    return Scores(model).eval()


def _check_batch(ranker: CrossEncoderRanker) -> PairBatch:
    """A batch of uneven pairs (padding exercised) spanning the token budgets."""
    rng = np.random.default_rng(0)
    config = ranker.config
    vocab = int(ranker.tokenizer.vocab_size)
    low = min(1000, vocab // 2)
    pairs = []
    for n in (config.context_tokens, 3, config.context_tokens // 2):
        for m in (config.candidate_tokens, 1, config.candidate_tokens // 2):
            pairs.append(
                (
                    rng.integers(low, vocab, size=n).tolist(),
                    rng.integers(low, vocab, size=m).tolist(),
                )
            )
    return ranker.pairs(pairs)


def _feed(session: onnxruntime.InferenceSession, batch: PairBatch) -> dict[str, Any]:
    arrays = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "token_type_ids": batch.token_type_ids,
    }
    # The exporter drops inputs the graph never reads; feed only what it declares.
    return {i.name: arrays[i.name] for i in session.get_inputs()}


def export_crossencoder_onnx(
    ranker: CrossEncoderRanker,
    directory: Path,
    *,
    precisions: Sequence[str],
    default_precision: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the cross-encoder ``ranker`` as an ONNX Runtime ranker artifact in ``directory``.

    One export, then one file per precision: ``model.onnx`` (fp32) and/or
    ``model.int8.onnx`` (dynamic int8 quantisation of the weights; activations are
    quantised per batch at run time). Each graph is checked against torch on a batch of
    uneven pairs; the fp32 graph must match within :data:`EXPORT_TOLERANCE`, the int8
    difference is recorded in the manifest. Call it through
    :func:`newarrivals.ranker.export.export_onnx`, which checks the precisions.

    Args:
        ranker: A torch cross-encoder (its temperature and token budgets are carried over).
        directory: Where to write (created; files overwritten).
        precisions: Which of :data:`~newarrivals.ranker.onnx_sessions.PRECISIONS` to write.
        default_precision: What a load opens when not told (one of ``precisions``).
        extra: JSON-ready data recorded in the manifest under ``"training"``.

    Returns:
        The directory.

    Raises:
        IndexIntegrityError: when the fp32 graph's scores differ from torch's by more
            than :data:`EXPORT_TOLERANCE`.
        MissingExtraError: without onnx/onnxscript/onnxruntime.
    """
    require_onnx()
    import onnxruntime
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    batch = _check_batch(ranker)
    inputs = (
        torch.from_numpy(batch.input_ids),
        torch.from_numpy(batch.attention_mask),
        torch.from_numpy(batch.token_type_ids),
    )
    batch_dim = torch.export.Dim("batch")
    seq_dim = torch.export.Dim("sequence")
    dynamic = {name: {0: batch_dim, 1: seq_dim} for name in INPUT_NAMES}
    want = ranker.score_batch(batch)
    model = ranker.torch_model
    was_training = model.training
    models: dict[str, dict[str, Any]] = {}
    declared: list[str] = []
    try:
        module = _scores_module(model.to("cpu"))
        with tempfile.TemporaryDirectory() as tmp:
            fp32_path = Path(tmp) / "model.onnx"
            program = torch.onnx.export(
                module,
                inputs,
                input_names=list(INPUT_NAMES),
                output_names=["scores"],
                dynamic_shapes=dynamic,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            if program is None:  # only the legacy exporter returns None
                raise IndexIntegrityError("torch.onnx.export returned no program.")
            program.save(str(fp32_path))
            for precision in precisions:
                target = directory / MODEL_FILES[precision]
                if precision == "int8":
                    from onnxruntime.quantization import QuantType, quantize_dynamic

                    quantize_dynamic(fp32_path, target, weight_type=QuantType.QInt8)
                else:
                    shutil.copyfile(fp32_path, target)
                session = onnxruntime.InferenceSession(
                    str(target), session_options(1), providers=["CPUExecutionProvider"]
                )
                declared = [i.name for i in session.get_inputs()]
                got = np.asarray(session.run(None, _feed(session, batch))[0], dtype=np.float64)
                max_diff = float(np.max(np.abs(got.reshape(-1) - want)))
                if precision == "fp32" and not max_diff <= EXPORT_TOLERANCE:
                    raise IndexIntegrityError(
                        f"the exported graph's scores differ from torch's by {max_diff:.2e} "
                        f"(> {EXPORT_TOLERANCE:.0e}) on the check batch; the export is wrong, "
                        "do not serve it."
                    )
                models[precision] = {
                    "file": MODEL_FILES[precision],
                    "max_abs_diff_vs_torch": max_diff,
                }
                logger.info(
                    "exported %s ONNX ranker to %s (max |onnx - torch| %.2e on %d pairs)",
                    precision,
                    target,
                    max_diff,
                    len(batch),
                )
    finally:
        model.to(ranker.device)
        model.train(was_training)
    ranker.tokenizer.save_pretrained(str(directory))
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": ONNX_KIND,
        "config": ranker.config.to_dict(),
        "num_layers": ranker.num_layers,
        "architecture": ranker.architecture,
        "temperature": ranker.temperature,
        "models": models,
        "default_precision": default_precision,
        "inputs": declared,
        "check_pairs": len(batch),
        "created_at": datetime.now(UTC).isoformat(),
        "library_versions": onnx_library_versions(),
    }
    if extra is not None:
        manifest["training"] = dict(extra)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


class OnnxRanker(PairRanker):
    """A ranker whose forward pass runs in ONNX Runtime (CPU), fp32 or int8.

    Build it with :meth:`load` on a directory written by :func:`export_onnx`.

    Example:
        >>> ranker = OnnxRanker.load(Path("ranker-int8"), threads=2)  # doctest: +SKIP
        >>> context = ranker.encode_context(recent)  # doctest: +SKIP
        >>> ranked = ranker.rank(context, candidates, products)  # doctest: +SKIP
    """

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        tokenizer: Any,
        config: RankerConfig,
        *,
        temperature: float = 1.0,
        precision: str = "fp32",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__(tokenizer, config, temperature=temperature, cache_size=cache_size)
        self._session = session
        self._precision = precision
        self._input_names = {i.name for i in session.get_inputs()}

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        precision: str | None = None,
        threads: int | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> OnnxRanker:
        """Open an ONNX ranker artifact with ``threads`` intra-op threads.

        Args:
            directory: Written by :func:`export_onnx`.
            precision: ``fp32`` or ``int8``; ``None`` opens the manifest's default.
            threads: Intra-op threads (``None``: ONNX Runtime's default, all cores).
            cache_size: Products whose candidate token ids are kept.

        Raises:
            ConfigError: when ``directory`` is not an ONNX ranker artifact, or does not
                hold ``precision`` (naming the ones it holds).
            IndexIntegrityError: when its files disagree with the manifest.
        """
        require_onnx()
        import onnxruntime
        from transformers import AutoTokenizer

        directory = Path(directory)
        manifest, chosen, (path,) = onnx_graphs(directory, ONNX_KIND, precision, ("file",))
        config = RankerConfig.from_dict(manifest["config"])
        positions = int(manifest["architecture"]["max_position_embeddings"])
        if config.max_pair_tokens > positions:
            raise IndexIntegrityError(
                f"{directory}: pairs of {config.max_pair_tokens} tokens exceed the model's "
                f"{positions} positions."
            )
        session = onnxruntime.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        declared = sorted(i.name for i in session.get_inputs())
        if declared != sorted(manifest["inputs"]):
            raise IndexIntegrityError(
                f"{directory}: the graph takes inputs {declared} but the manifest records "
                f"{sorted(manifest['inputs'])}."
            )
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        logger.info(
            "loaded %s ONNX ranker %s (%d layers, %s threads)",
            chosen,
            directory,
            int(manifest["num_layers"]),
            threads if threads is not None else "default",
        )
        return cls(
            session,
            tokenizer,
            config,
            temperature=float(manifest["temperature"]),
            precision=chosen,
            cache_size=cache_size,
        )

    @property
    def precision(self) -> str:
        return self._precision

    def score_batch(self, batch: PairBatch) -> F64Array:
        """Raw scores of a prepared batch (one ``session.run``)."""
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        out = self._session.run(None, _feed(self._session, batch))[0]
        scores: F64Array = np.asarray(out, dtype=np.float64).reshape(-1)
        return scores
