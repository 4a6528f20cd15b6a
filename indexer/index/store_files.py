"""The files of a :class:`~newarrivals.indexer.index.store.ProductIndex` and their checks.

The layout (see :mod:`newarrivals.indexer.index.store`) is written and read here only.
Reading checks every invariant the files share (counts, dimensions, id order, the ANN
index's ids against ``ids.json``) and names both numbers when two disagree, so a corrupt or
half-copied directory fails on load instead of answering searches wrongly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import faiss
import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import F32Array, I64Array
from newarrivals.indexer.errors import IndexIntegrityError
from newarrivals.indexer.index.ann import AnnConfig, VectorIndex, load_index

__all__ = ["StoreColumns", "read_store", "write_store"]


FORMAT_VERSION: Final = 1
INDEX_FILE: Final = "index.faiss"
IDS_FILE: Final = "ids.json"
VECTORS_FILE: Final = "vectors.npy"
META_FILE: Final = "meta.npz"
ANN_FILE: Final = "ann.json"


@dataclass(frozen=True)
class StoreColumns:
    """The live rows of a product index in int-id order, as its files hold them."""

    config: AnnConfig
    int_ids: I64Array
    product_ids: list[str]
    vectors: F32Array
    category_vocab: list[str]
    category_code: npt.NDArray[np.int32]
    price: npt.NDArray[np.float64]
    launched_us: I64Array
    available: npt.NDArray[np.bool_]
    next_id: int


def write_store(directory: Path, columns: StoreColumns, index: VectorIndex) -> None:
    """Write ``columns`` and the ANN ``index`` into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    index.save(directory / INDEX_FILE)
    ids = {
        "next_id": columns.next_id,
        "int_ids": columns.int_ids.tolist(),
        "product_ids": columns.product_ids,
    }
    (directory / IDS_FILE).write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
    np.save(directory / VECTORS_FILE, columns.vectors, allow_pickle=False)
    with (directory / META_FILE).open("wb") as fh:
        np.savez(
            fh,
            category_vocab=np.asarray(columns.category_vocab, dtype=np.str_),
            category_code=columns.category_code,
            price=columns.price,
            launched_us=columns.launched_us,
            available=columns.available,
        )
    ann = {
        "format": FORMAT_VERSION,
        "config": replace(columns.config, use_gpu=False).to_dict(),
        "dim": int(columns.vectors.shape[1]),
        "count": len(columns.product_ids),
        "faiss_version": faiss.__version__,
    }
    (directory / ANN_FILE).write_text(json.dumps(ann, indent=2) + "\n", encoding="utf-8")


def read_store(directory: Path, *, use_gpu: bool) -> tuple[StoreColumns, VectorIndex]:
    """Read what :func:`write_store` wrote, checking that the files agree.

    Raises:
        IndexIntegrityError: A file is missing or the files disagree (naming both numbers).
    """
    for name in (ANN_FILE, IDS_FILE, VECTORS_FILE, META_FILE, INDEX_FILE):
        if not (directory / name).is_file():
            raise IndexIntegrityError(
                f"{directory / name} is missing; the directory is not a complete "
                f"ProductIndex (rebuild or re-publish it)."
            )
    ann = _read_json(directory / ANN_FILE, ("format", "config", "dim", "count"))
    if ann.get("format") != FORMAT_VERSION:
        raise IndexIntegrityError(
            f"{directory / ANN_FILE} has format {ann.get('format')!r}, this code reads "
            f"format {FORMAT_VERSION}; rebuild the index."
        )
    config = replace(AnnConfig.from_dict(ann["config"]), use_gpu=use_gpu)
    ids = _read_json(directory / IDS_FILE, ("next_id", "int_ids", "product_ids"))
    product_ids = [str(p) for p in ids["product_ids"]]
    int_ids = np.asarray(ids["int_ids"], dtype=np.int64)
    next_id = int(ids["next_id"])
    vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
    with np.load(directory / META_FILE, allow_pickle=False) as meta:
        columns = {name: meta[name] for name in meta.files}
    index = load_index(directory / INDEX_FILE, config)

    def check(what: str, got: int, expected_what: str, expected: int) -> None:
        if got != expected:
            raise IndexIntegrityError(
                f"{directory}: {what} is {got} but {expected_what} is {expected}; the "
                f"files are inconsistent, rebuild or re-publish the index."
            )

    n = len(product_ids)
    check(f"{IDS_FILE} int_ids count", int(int_ids.size), "product_ids count", n)
    check(f"{INDEX_FILE} live count (ntotal)", len(index), f"{IDS_FILE} id count", n)
    check(f"{VECTORS_FILE} row count", int(vectors.shape[0]), f"{IDS_FILE} id count", n)
    check(f"{ANN_FILE} count", int(ann["count"]), f"{IDS_FILE} id count", n)
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise IndexIntegrityError(
            f"{VECTORS_FILE} must be float32 (n, dim), got {vectors.dtype} "
            f"{vectors.shape}; rebuild the index."
        )
    check(f"{VECTORS_FILE} dim", int(vectors.shape[1]), f"{INDEX_FILE} dim", index.dim)
    check(f"{ANN_FILE} dim", int(ann["dim"]), f"{INDEX_FILE} dim", index.dim)
    for name in ("category_code", "price", "launched_us", "available"):
        if name not in columns:
            raise IndexIntegrityError(f"{META_FILE} lacks column {name!r}; rebuild.")
        check(f"{META_FILE} {name} length", int(columns[name].shape[0]), "id count", n)
    if len(set(product_ids)) != n:
        check("distinct product id count", len(set(product_ids)), "product id count", n)
    if n and (np.any(int_ids[1:] <= int_ids[:-1]) or int(int_ids[-1]) >= next_id):
        raise IndexIntegrityError(
            f"{IDS_FILE}: int_ids must increase and stay below next_id={next_id}; "
            f"rebuild the index."
        )
    if not np.array_equal(index.ids(), int_ids):
        stray = np.setxor1d(index.ids(), int_ids)
        raise IndexIntegrityError(
            f"{INDEX_FILE} and {IDS_FILE} disagree on {stray.size} int id(s), e.g. "
            f"{stray[:5].tolist()}; rebuild the index."
        )
    vocab = [str(c) for c in columns["category_vocab"].tolist()]
    codes = columns["category_code"].astype(np.int32)
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= len(vocab)):
        check(
            f"{META_FILE} max category code + 1",
            int(codes.max()) + 1,
            "vocabulary size",
            len(vocab),
        )
    stored = StoreColumns(
        config=config,
        int_ids=int_ids,
        product_ids=product_ids,
        vectors=np.ascontiguousarray(vectors),
        category_vocab=vocab,
        category_code=codes,
        price=columns["price"].astype(np.float64),
        launched_us=columns["launched_us"].astype(np.int64),
        available=columns["available"].astype(bool),
        next_id=next_id,
    )
    return stored, index


def _read_json(path: Path, required: Sequence[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexIntegrityError(f"cannot read {path}: {exc}; rebuild the index.") from exc
    if not isinstance(data, dict):
        raise IndexIntegrityError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    missing = [key for key in required if key not in data]
    if missing:
        raise IndexIntegrityError(f"{path} lacks keys {missing}; rebuild the index.")
    return data
