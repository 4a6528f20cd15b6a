"""ONNX Runtime copies of the encoders, so a small refresh does not pay for importing torch.

A 1%-changed refresh spends most of its time importing torch, sentence-transformers and
open_clip (several seconds) before it encodes a hundred products in a fraction of a second.
After a build has loaded a torch encoder, :func:`export_text` / :func:`export_image` write an
ONNX copy of it into the embedding cache (``<cache>/onnx/<sha256(encoder id)[:16]>/``) and
keep it only if it reproduces the torch vectors on a probe of real inputs. Later builds on
the CPU encode with the copy: ``onnxruntime`` and ``tokenizers`` import in a fraction of a
second. The copy has the same ``encoder_id`` as its source, because its vectors are the
same up to float rounding (checked at export), so both share one embedding cache.

The photo preprocessing is re-implemented in PIL + NumPy from the torchvision pipeline of
the tower (resize the short side, centre crop, scale, normalise); a pipeline with any other
step is not exported, and the torch encoder stays in use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from newarrivals.indexer.encoders.base import file_digest, l2_normalize
from newarrivals.indexer.encoders.image import ImageEncodeResult, UnreadableImageError, load_photo
from newarrivals.indexer.errors import MissingExtraError

if TYPE_CHECKING:
    from newarrivals.indexer.encoders.image import ImageEncoder
    from newarrivals.indexer.encoders.text import TextEncoder

__all__ = [
    "ImageRecipe",
    "OnnxImageEncoder",
    "OnnxTextEncoder",
    "export_folder",
    "export_image",
    "export_text",
    "image_recipe",
    "load_image_export",
    "load_text_export",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
META_FILE = "export.json"
TOKENIZER_FILE = "tokenizer.json"
#: Largest |torch - onnx| difference accepted on the probe, per vector component of unit
#: vectors: float32 reorderings give ~1e-7; a wrong graph or preprocessing gives ~1e-1.
TEXT_TOLERANCE = 1e-4
IMAGE_TOLERANCE = 1e-3
_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_WHITE = (255, 255, 255)
#: Steps the replay does implicitly: photos are already RGB, and scaling to [0, 1] is
#: part of :meth:`ImageRecipe.apply`.
_PASSIVE_STEPS = {"MaybeToTensor", "ToTensor", "MaybeConvertMode", "_convert_to_rgb"}


def export_folder(cache_root: Path, encoder_id: str) -> Path:
    """Where the ONNX copy of an encoder lives inside an embedding cache."""
    return cache_root / "onnx" / hashlib.sha256(encoder_id.encode()).hexdigest()[:16]


def _session(model_path: Path, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise MissingExtraError(
            "the ONNX encoders need onnxruntime: `pip install onnxruntime`."
        ) from exc
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _read_meta(folder: Path, encoder_id: str, kind: str) -> dict[str, Any] | None:
    """The export's metadata when it is a verified copy of ``encoder_id``, else ``None``."""
    meta_path = folder / META_FILE
    if not meta_path.is_file() or not (folder / MODEL_FILE).is_file():
        return None
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if meta.get("encoder_id") != encoder_id or meta.get("kind") != kind:
        logger.warning(
            "ignoring ONNX export in %s: it belongs to %r", folder, meta.get("encoder_id")
        )
        return None
    if not meta.get("verified"):
        return None
    if file_digest(folder / MODEL_FILE) != meta.get("model_sha256"):
        logger.warning("ignoring ONNX export in %s: %s changed after export", folder, MODEL_FILE)
        return None
    return meta


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the tracer's warnings about Python-side branches: the probe check catches a
    trace that does not generalise, and the warnings would bury the build's own output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Tt]race.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index")
        yield


def _keep_if_verified(
    tmp: Path, folder: Path, meta: dict[str, Any], diff: float, tolerance: float
) -> Path | None:
    """Record the probe check; publish the export when it passed, discard it otherwise."""
    meta |= {"verified": diff <= tolerance, "probe_max_abs_diff": diff}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    if not meta["verified"]:
        logger.warning(
            "ONNX copy of %s differs from torch by %.2g > %.0g: not used",
            meta["encoder_id"],
            diff,
            tolerance,
        )
        shutil.rmtree(tmp)
        return None
    _publish(tmp, folder)
    logger.info("ONNX copy of %s in %s (probe diff %.1g)", meta["encoder_id"], folder, diff)
    return folder


def _publish(tmp: Path, folder: Path) -> None:
    """Move a finished export into place; a crash mid-export leaves only a temp folder."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)


# --------------------------------------------------------------------------------------
# Text


class OnnxTextEncoder:
    """The ONNX copy of a sentence-transformers text encoder (same ``encoder_id``).

    Example:
        >>> enc = load_text_export(Path("index/cache"), text_encoder.encoder_id)  # doctest: +SKIP
        >>> enc.encode(["red striped t-shirt"]).shape  # doctest: +SKIP
        (1, 384)
    """

    runtime = "onnx"

    def __init__(self, folder: Path, meta: dict[str, Any], *, threads: int | None = None) -> None:
        self.folder = folder
        self.meta = meta
        self.threads = threads

    @property
    def encoder_id(self) -> str:
        return str(self.meta["encoder_id"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @cached_property
    def _tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        tok.enable_truncation(max_length=int(self.meta["max_seq_length"]))
        tok.enable_padding(pad_id=int(self.meta["pad_id"]), pad_token=str(self.meta["pad_token"]))
        return tok

    @cached_property
    def _session(self) -> Any:
        return _session(self.folder / MODEL_FILE, self.threads)

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
            out[start : start + len(batch)] = self._session.run(None, wanted)[0]
        return l2_normalize(out)


def load_text_export(
    cache_root: Path, encoder_id: str, *, threads: int | None = None
) -> OnnxTextEncoder | None:
    """The verified ONNX copy of a text encoder in this cache, or ``None``."""
    folder = export_folder(cache_root, encoder_id)
    meta = _read_meta(folder, encoder_id, "text")
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
        with torch.inference_mode(False), torch.no_grad(), _quiet_tracing():
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
        return _keep_if_verified(tmp, folder, meta, diff, TEXT_TOLERANCE)
    except Exception as exc:  # an export failure must never fail the build that asked for it
        shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("could not export %s to ONNX (%s); torch stays in use", encoder, exc)
        return None


# --------------------------------------------------------------------------------------
# Photos


@dataclass(frozen=True)
class ImageRecipe:
    """A tower's evaluation preprocessing, in terms PIL and NumPy can replay.

    ``resize`` is the short side after resizing, ``crop`` the side of the centre crop.
    """

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, image: Image.Image) -> np.ndarray:
        """``(3, crop, crop)`` float32, as torchvision's PIL pipeline computes it."""
        img = image.convert("RGB")
        w, h = img.size
        # torchvision: the short side becomes ``resize``, the long side is truncated.
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        if size != img.size:
            img = img.resize(size, _PIL_FILTERS[self.interpolation])
        w, h = img.size
        top = round((h - self.crop) / 2.0)
        left = round((w - self.crop) / 2.0)
        img = img.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        out: np.ndarray = (x - mean) / std
        return out


def _single_int(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, list | tuple) and len(size) in (1, 2) and len(set(size)) == 1:
        return int(size[0])
    return None


def image_recipe(preprocess: Any) -> ImageRecipe | str:
    """Read a torchvision ``Compose`` into an :class:`ImageRecipe`, or say why it can't be."""
    steps = getattr(preprocess, "transforms", None)
    if steps is None:
        return f"preprocess {type(preprocess).__name__} is not a torchvision Compose"
    found: dict[str, Any] = {}
    for step in steps:
        name = getattr(step, "__name__", type(step).__name__)
        if name == "Resize":
            size = step.size if isinstance(step.size, int) else _single_int(step.size)
            interp = str(getattr(step.interpolation, "value", step.interpolation))
            if isinstance(step.size, list | tuple) and len(step.size) == 2:
                return "Resize to a fixed (h, w) is not replayed"
            if size is None or interp not in _PIL_FILTERS or step.max_size is not None:
                return f"unsupported Resize({step.size}, {interp}, max_size={step.max_size})"
            found["resize"], found["interpolation"] = size, interp
        elif name == "CenterCrop":
            crop = _single_int(step.size)
            if crop is None:
                return f"unsupported CenterCrop({step.size})"
            found["crop"] = crop
        elif name == "Normalize":
            found["mean"] = tuple(float(v) for v in step.mean)
            found["std"] = tuple(float(v) for v in step.std)
        elif name not in _PASSIVE_STEPS or getattr(step, "mode", "RGB") != "RGB":
            return f"preprocess step {name} is not replayed"
    missing = {"resize", "crop", "mean", "std"} - found.keys()
    if missing:
        return f"preprocess lacks {sorted(missing)}"
    if found["crop"] > found["resize"]:
        return f"CenterCrop({found['crop']}) larger than Resize({found['resize']}) pads"
    return ImageRecipe(**found)


class OnnxImageEncoder:
    """The ONNX copy of an open_clip image tower (same ``encoder_id``)."""

    runtime = "onnx"

    def __init__(self, folder: Path, meta: dict[str, Any], *, threads: int | None = None) -> None:
        self.folder = folder
        self.meta = meta
        self.threads = threads
        self.recipe = ImageRecipe(
            resize=int(meta["recipe"]["resize"]),
            crop=int(meta["recipe"]["crop"]),
            interpolation=str(meta["recipe"]["interpolation"]),
            mean=tuple(meta["recipe"]["mean"]),
            std=tuple(meta["recipe"]["std"]),
        )

    @property
    def encoder_id(self) -> str:
        return str(self.meta["encoder_id"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def pad_to_square(self) -> bool:
        return bool(self.meta["pad_to_square"])

    @cached_property
    def _session(self) -> Any:
        return _session(self.folder / MODEL_FILE, self.threads)

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalize(self._session.run(None, {"pixels": batch})[0])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode already-decoded photos (padded to square like the torch encoder)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        prepared = [
            self.recipe.apply(
                ImageOps.pad(im.convert("RGB"), (max(im.size),) * 2, color=_WHITE)
                if self.pad_to_square
                else im
            )
            for im in images
        ]
        return self._embed(np.stack(prepared))

    def encode_paths(self, paths: Sequence[str | Path]) -> ImageEncodeResult:
        """Encode photos from disk; an unreadable photo is reported, not fatal."""
        n = len(paths)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        failures: dict[int, str] = {}
        bs = int(self.meta["batch_size"])

        def prepare(i: int) -> tuple[int, np.ndarray | None, str | None]:
            try:
                photo = load_photo(paths[i], pad_to_square=self.pad_to_square)
            except UnreadableImageError as exc:
                return i, None, str(exc)
            return i, self.recipe.apply(photo), None

        with ThreadPoolExecutor(max_workers=int(self.meta["workers"])) as pool:
            for start in range(0, n, bs):
                rows = list(pool.map(prepare, range(start, min(start + bs, n))))
                good = [(i, x) for i, x, _ in rows if x is not None]
                failures.update({i: err for i, _, err in rows if err is not None})
                if good:
                    idx = [i for i, _ in good]
                    vectors[idx] = self._embed(np.stack([x for _, x in good]))
                    ok[idx] = True
        return ImageEncodeResult(vectors=vectors, ok=ok, failures=failures)


def load_image_export(
    cache_root: Path, encoder_id: str, *, threads: int | None = None
) -> OnnxImageEncoder | None:
    """The verified ONNX copy of an image tower in this cache, or ``None``."""
    folder = export_folder(cache_root, encoder_id)
    meta = _read_meta(folder, encoder_id, "image")
    return OnnxImageEncoder(folder, meta, threads=threads) if meta else None


def export_image(
    encoder: ImageEncoder, cache_root: Path, probe: Sequence[str | Path]
) -> Path | None:
    """Write a verified ONNX copy of an image tower; ``None`` when it can't be made.

    Args:
        encoder: the torch encoder (its tower is loaded if it isn't yet).
        cache_root: the embedding cache the copy goes into.
        probe: photo paths the copy must reproduce within :data:`IMAGE_TOLERANCE`;
            unreadable ones are skipped, and a synthetic photo is used when none is left.
    """
    import torch

    model, preprocess = encoder.model, encoder._loaded[1]
    recipe = image_recipe(preprocess)
    if isinstance(recipe, str):
        logger.info("no ONNX copy of %s: %s", encoder.encoder_id, recipe)
        return None
    photos: list[Image.Image] = []
    for path in probe:
        if len(photos) >= 32:
            break
        try:
            photos.append(load_photo(path, pad_to_square=encoder.config.pad_to_square))
        except UnreadableImageError:
            continue
    if not photos:
        rng = np.random.default_rng(0)
        photos = [Image.fromarray(rng.integers(0, 256, (90, 60, 3), dtype=np.uint8))]

    class _Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.model.encode_image(pixels)
            return out

    folder = export_folder(cache_root, encoder.encoder_id)
    tmp = folder.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        dummy = torch.zeros((2, 3, recipe.crop, recipe.crop), device=encoder.device)
        # With gradients on, nn.MultiheadAttention skips its fused fast path, whose
        # kernel has no ONNX form; tracing computes no gradients either way.
        with torch.inference_mode(False), torch.enable_grad(), _quiet_tracing():
            torch.onnx.export(
                _Wrapped().eval(),
                (dummy,),
                str(tmp / MODEL_FILE),
                input_names=["pixels"],
                output_names=["embedding"],
                dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
                dynamo=False,
                opset_version=17,
            )
        cfg = encoder.config
        meta: dict[str, Any] = {
            "kind": "image",
            "encoder_id": encoder.encoder_id,
            "dim": encoder.dim,
            "recipe": asdict(recipe),
            "pad_to_square": cfg.pad_to_square,
            "batch_size": cfg.batch_size,
            "workers": cfg.workers,
            "model_sha256": file_digest(tmp / MODEL_FILE),
            "verified": False,
        }
        candidate = OnnxImageEncoder(tmp, meta, threads=None)
        diff = float(np.abs(candidate.encode_images(photos) - encoder.encode_images(photos)).max())
        return _keep_if_verified(tmp, folder, meta, diff, IMAGE_TOLERANCE)
    except Exception as exc:  # an export failure must never fail the build that asked for it
        shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("could not export %s to ONNX (%s); torch stays in use", encoder, exc)
        return None
