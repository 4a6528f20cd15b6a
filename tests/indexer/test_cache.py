from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from newarrivals.indexer import IndexIntegrityError
from newarrivals.indexer.index.cache import EmbeddingCache


def test_put_lookup_and_persist(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "enc:a", dim=3)
    vecs = np.arange(6, dtype=np.float32).reshape(2, 3)
    cache.put(["k1", "k2"], vecs)
    found, out = cache.lookup(["k2", "nope", "k1"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(out[0], vecs[1])
    assert not out[1].any()
    reopened = EmbeddingCache(tmp_path, "enc:a", dim=3)
    assert len(reopened) == 2 and "k1" in reopened
    assert EmbeddingCache.known_dim(tmp_path, "enc:a") == 3
    assert EmbeddingCache.known_dim(tmp_path, "enc:other") is None


def test_encoders_do_not_share_entries(tmp_path: Path) -> None:
    EmbeddingCache(tmp_path, "enc:a", dim=2).put(["k"], np.ones((1, 2), np.float32))
    found, _ = EmbeddingCache(tmp_path, "enc:b", dim=2).lookup(["k"])
    assert not found.any()


def test_dim_mismatch_and_bad_shapes(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "enc:a", dim=2)
    with pytest.raises(ValueError, match=r"expected vectors of shape \(1, 2\)"):
        cache.put(["k"], np.ones((1, 3), np.float32))
    with pytest.raises(IndexIntegrityError, match="dim 2"):
        EmbeddingCache(tmp_path, "enc:a", dim=5)


def test_leftover_temp_files_are_ignored(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "enc:a", dim=2)
    cache.put(["k"], np.ones((1, 2), np.float32))
    # What an interrupted write leaves behind must not be read.
    (cache.dir / ".shard-x.tmp.npz").write_bytes(b"garbage")
    assert len(EmbeddingCache(tmp_path, "enc:a", dim=2)) == 1
