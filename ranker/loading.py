"""Serving runtimes: ONNX Runtime export and inference, thread set-up, and one loader.

**ONNX.** :func:`export_onnx` writes a torch ranker (teacher or distilled student) as an
ONNX graph with dynamic batch and sequence axes (``torch.onnx.export``, the ``dynamo``
exporter), optionally with dynamic int8 quantisation of the weights
(``onnxruntime.quantization.quantize_dynamic``), checks the graph's scores against torch
on a sample batch, and writes an artifact directory: one graph per precision
(``model.onnx``, ``model.int8.onnx``), the tokenizer files and ``ranker.json``
(``kind: onnx-cross-encoder-ranker``, the default precision, each graph's check).
:class:`OnnxRanker` serves it through the same request path as the torch ranker
(:class:`~newarrivals.ranker.base.PairRanker`). The graph computes
:func:`~newarrivals.ranker.model.pair_scores`, the same function as the torch forward pass.

**Threads.** :func:`configure_threads` is the one place that sets torch's intra-op threads;
ONNX Runtime sessions take theirs when created (:func:`session_options`). Both happen at
start-up (:func:`load_ranker`), never at import.

**Loading.** :func:`load_ranker` reads the manifest and returns a
:class:`~newarrivals.ranker.base.Ranker` whatever the directory holds: a torch teacher, a
torch student or an ONNX student.
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

from newarrivals.indexer.errors import ConfigError, IndexIntegrityError, MissingExtraError
from newarrivals.indexer.validation import require_int
from newarrivals.ranker.base import DEFAULT_CACHE_SIZE, FloatArray, PairRanker, Ranker
from newarrivals.ranker.config import RankerConfig
from newarrivals.ranker.context import PairBatch
from newarrivals.ranker.model import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    TORCH_KIND,
    CrossEncoderRanker,
    TorchPairRanker,
    _ranker_library_versions,
    pair_scores,
    read_manifest,
)

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "ONNX_KIND",
    "PRECISIONS",
    "OnnxRanker",
    "configure_threads",
    "export_onnx",
    "load_ranker",
    "session_options",
]

logger = logging.getLogger(__name__)

#: ``kind`` in the manifest of an ONNX Runtime ranker.
ONNX_KIND: Final = "onnx-cross-encoder-ranker"
#: Weight precisions :func:`export_onnx` writes.
PRECISIONS: Final = ("fp32", "int8")
MODEL_FILES: Final = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
INPUT_NAMES: Final = ("input_ids", "attention_mask", "token_type_ids")
#: Largest |onnx - torch| raw-score difference an export may show on its check batch
#: (fp32; int8 changes scores by design and is reported, not checked).
EXPORT_TOLERANCE: Final = 1e-3


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (``None`` leaves the library default).

    Call once at start-up (the CLI, the service's lifespan, a benchmark); ONNX Runtime
    sessions get the same number through :func:`session_options`.

    Raises:
        ConfigError: for a count below 1.
    """
    if threads is None:
        return
    require_int("threads", threads)
    import torch

    torch.set_num_threads(threads)
    logger.info("torch intra-op threads: %d", threads)


def session_options(threads: int | None) -> onnxruntime.SessionOptions:
    """ONNX Runtime options for one ranking session: ``threads`` intra-op, one inter-op.

    A request is one batched forward pass, so parallelism inside operators is all there
    is to use; ``None`` lets ONNX Runtime pick (all cores).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        require_int("threads", threads)
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def onnx_graphs(
    directory: Path, kind: str, precision: str | None, parts: Sequence[str]
) -> tuple[dict[str, Any], str, list[Path]]:
    """An ONNX ranker artifact's manifest, the precision chosen and its graph files.

    Args:
        directory: The artifact.
        kind: The manifest ``kind`` it must have.
        precision: ``fp32``/``int8``; ``None`` takes the manifest's default.
        parts: The keys of the precision's entry that name graph files.

    Raises:
        ConfigError: when ``directory`` holds another kind, or not ``precision`` (naming
            the ones it holds).
        IndexIntegrityError: when a graph file the manifest names is missing.
    """
    manifest = read_manifest(directory)
    if manifest.get("kind") != kind:
        raise ConfigError(
            f"{directory} holds a {manifest.get('kind')!r} ranker, not a {kind!r} one; load "
            "it with newarrivals.ranker.load_ranker."
        )
    models: dict[str, Any] = manifest["models"]
    chosen = precision or str(manifest["default_precision"])
    if chosen not in models:
        raise ConfigError(
            f"{directory} holds ONNX precisions {sorted(models)}, not {chosen!r}; pass "
            "one of those (or export it again with that precision)."
        )
    paths = [directory / str(models[chosen][part]) for part in parts]
    for path in paths:
        if not path.is_file():
            raise IndexIntegrityError(
                f"{directory}: the manifest names {path.name!r}, which is missing."
            )
    return manifest, chosen, paths


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"ONNX export and inference need onnx, onnxscript and onnxruntime ({exc}); "
            "install them with `pip install -e '.[export]'`."
        ) from None


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


def export_onnx(
    ranker: TorchPairRanker,
    directory: Path,
    *,
    precisions: Sequence[str] = PRECISIONS,
    default_precision: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``ranker`` as an ONNX Runtime ranker artifact in ``directory``.

    One export, then one file per precision: ``model.onnx`` (fp32) and/or
    ``model.int8.onnx`` (dynamic int8 quantisation of the weights; activations are
    quantised per batch at run time). Each graph is checked against torch on a batch of
    uneven pairs; the fp32 graph must match within :data:`EXPORT_TOLERANCE`, the int8
    difference is recorded in the manifest.

    Args:
        ranker: A torch ranker (its temperature and token budgets are carried over).
        directory: Where to write (created; files overwritten).
        precisions: Which of :data:`PRECISIONS` to write.
        default_precision: What :func:`load_ranker` opens when not told; ``None`` picks
            int8 when written, else fp32.
        extra: JSON-ready data recorded in the manifest under ``"training"``.

    Returns:
        The directory.

    Raises:
        ConfigError: for an unknown or missing precision.
        IndexIntegrityError: when the fp32 graph's scores differ from torch's by more
            than :data:`EXPORT_TOLERANCE`.
        MissingExtraError: without onnx/onnxscript/onnxruntime.
    """
    wanted = list(dict.fromkeys(precisions))
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown or not wanted:
        raise ConfigError(
            f"precisions must be a non-empty selection of {list(PRECISIONS)}, got "
            f"{list(precisions)!r}."
        )
    default = default_precision or ("int8" if "int8" in wanted else "fp32")
    if default not in wanted:
        raise ConfigError(
            f"default_precision {default!r} is not among the exported precisions {wanted}."
        )
    _require_onnx()
    from newarrivals.ranker.shared import SharedContextRanker, export_shared_onnx

    if isinstance(ranker, SharedContextRanker):
        return export_shared_onnx(
            ranker, directory, precisions=wanted, default_precision=default, extra=extra
        )
    if not isinstance(ranker, CrossEncoderRanker):
        raise ConfigError(
            f"cannot export a {type(ranker).__name__} to ONNX; pass a CrossEncoderRanker or "
            "a SharedContextRanker."
        )
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
            for precision in wanted:
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
        "default_precision": default,
        "inputs": declared,
        "check_pairs": len(batch),
        "created_at": datetime.now(UTC).isoformat(),
        "library_versions": _onnx_library_versions(),
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
        _require_onnx()
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

    def score_batch(self, batch: PairBatch) -> FloatArray:
        """Raw scores of a prepared batch (one ``session.run``)."""
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        out = self._session.run(None, _feed(self._session, batch))[0]
        scores: FloatArray = np.asarray(out, dtype=np.float64).reshape(-1)
        return scores


def load_ranker(
    directory: Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    precision: str | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
) -> Ranker:
    """Load whatever ranker ``directory`` holds, by its manifest's ``kind``.

    Args:
        directory: A ranker artifact (``train-ranker``, ``distill-ranker``, an ONNX export).
        device: A resolved torch device for torch rankers; ONNX rankers run on CPU.
        threads: CPU threads for the forward pass (``None``: the library default); set at
            load, i.e. at start-up.
        precision: For an ONNX artifact, ``fp32`` or ``int8`` (``None``: its default); a
            torch artifact is fp32.
        cache_size: Products whose candidate token ids are kept between requests.

    Returns:
        A ranker with ``encode_context``, ``warm_cache`` and ``rank``.

    Raises:
        ConfigError: for a directory without a ranker manifest, an unknown ``kind`` (the
            valid ones are named), or an ONNX ranker asked onto a GPU.
    """
    from newarrivals.ranker.shared import (
        ONNX_SHARED_KIND,
        SHARED_KIND,
        OnnxSharedContextRanker,
        SharedContextRanker,
    )

    directory = Path(directory)
    manifest = read_manifest(directory)
    kind = manifest.get("kind", TORCH_KIND)
    if kind in (TORCH_KIND, SHARED_KIND):
        if precision not in (None, "fp32"):
            raise ConfigError(
                f"{directory} is a torch ranker (fp32), so precision must be None or 'fp32', "
                f"got {precision!r}; export it with export_onnx for int8."
            )
        configure_threads(threads)
        torch_class = CrossEncoderRanker if kind == TORCH_KIND else SharedContextRanker
        return torch_class.load(directory, device=device, cache_size=cache_size)
    if kind in (ONNX_KIND, ONNX_SHARED_KIND):
        if device != "cpu":
            raise ConfigError(
                f"{directory} is an ONNX ranker, which runs on CPU here, but device is "
                f"{device!r}; pass device='cpu' or serve the torch artifact on the GPU."
            )
        onnx_class = OnnxRanker if kind == ONNX_KIND else OnnxSharedContextRanker
        return onnx_class.load(
            directory, precision=precision, threads=threads, cache_size=cache_size
        )
    known = [TORCH_KIND, SHARED_KIND, ONNX_KIND, ONNX_SHARED_KIND]
    raise ConfigError(f"{directory}: unknown ranker kind {kind!r}; this code loads {known}.")


def _onnx_library_versions() -> dict[str, str]:
    from importlib import metadata

    found = _ranker_library_versions()
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
