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
out in :mod:`newarrivals.ranker._shared_nn`, so its keys and values can be reused.

Artifacts: ``model.safetensors``, ``shared_context_config.json``, the tokenizer files and
``ranker.json`` (``kind: shared-context-ranker``). ONNX: two graphs per precision, the
context encoder and the candidate scorer (``kind: onnx-shared-context-ranker``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.errors import ConfigError, IndexIntegrityError
from newarrivals.indexer.validation import require_fraction, require_int, require_known_fields
from newarrivals.ranker.base import DEFAULT_CACHE_SIZE, FloatArray, PairRanker
from newarrivals.ranker.config import RankerConfig
from newarrivals.ranker.context import PairBatch, UserContext
from newarrivals.ranker.model import FORMAT_VERSION, MANIFEST_FILE, TorchPairRanker, read_manifest

if TYPE_CHECKING:
    import onnxruntime
    import torch

__all__ = [
    "ONNX_SHARED_KIND",
    "SHARED_KIND",
    "OnnxSharedContextRanker",
    "SharedContextConfig",
    "SharedContextRanker",
    "export_shared_onnx",
]

logger = logging.getLogger(__name__)

SHARED_KIND: Final = "shared-context-ranker"
ONNX_SHARED_KIND: Final = "onnx-shared-context-ranker"
CONFIG_FILE: Final = "shared_context_config.json"
WEIGHTS_FILE: Final = "model.safetensors"
GRAPH_FILES: Final = {
    "fp32": ("context.onnx", "candidates.onnx"),
    "int8": ("context.int8.onnx", "candidates.int8.onnx"),
}
#: Largest |onnx - torch| raw-score difference the fp32 export may show.
EXPORT_TOLERANCE: Final = 1e-3

IntArray = npt.NDArray[np.int64]


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


def _context_array(tokenizer: Any, context: UserContext) -> IntArray:
    """``[CLS] context [SEP]`` as a ``(1, Lc)`` array."""
    ids = [tokenizer.cls_token_id, *context.token_ids, tokenizer.sep_token_id]
    return np.asarray([ids], dtype=np.int64)


def _candidate_arrays(
    tokenizer: Any, candidate_ids: Sequence[Sequence[int]]
) -> tuple[IntArray, IntArray]:
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

        from newarrivals.ranker._shared_nn import SharedContextEncoder

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

        from newarrivals.ranker._shared_nn import SharedContextEncoder

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

    def raw_scores(
        self, context: UserContext, candidate_ids: Sequence[Sequence[int]]
    ) -> FloatArray:
        """One request: the context encoded once, every candidate against it in one batch."""
        import torch

        ctx = torch.from_numpy(_context_array(self._tokenizer, context)).to(self._device)
        ids, mask = _candidate_arrays(self._tokenizer, candidate_ids)
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
        scores: FloatArray = out.float().cpu().numpy().astype(np.float64)
        return scores


# -- ONNX ---------------------------------------------------------------------------------


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

    from newarrivals.ranker.loading import _onnx_library_versions, session_options

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
    ctx = _context_array(ranker.tokenizer, context)
    ids, mask = _candidate_arrays(ranker.tokenizer, cands)
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
        "library_versions": _onnx_library_versions(),
    }
    if extra is not None:
        manifest["training"] = dict(extra)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def _run(
    sessions: tuple[onnxruntime.InferenceSession, onnxruntime.InferenceSession],
    context: IntArray,
    ids: IntArray,
    mask: IntArray,
) -> FloatArray:
    kv = sessions[0].run(None, {"context_ids": context})[0]
    out = sessions[1].run(None, {"candidate_ids": ids, "candidate_mask": mask, "context_kv": kv})[0]
    scores: FloatArray = np.asarray(out, dtype=np.float64).reshape(-1)
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

        from newarrivals.ranker.loading import onnx_graphs, session_options

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

    def raw_scores(
        self, context: UserContext, candidate_ids: Sequence[Sequence[int]]
    ) -> FloatArray:
        ids, mask = _candidate_arrays(self._tokenizer, candidate_ids)
        return _run(self._sessions, _context_array(self._tokenizer, context), ids, mask)

    def score_batch(self, batch: PairBatch) -> FloatArray:
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
