"""A trained user tower: a small sequence model that maps a user's recent history to a point
in the product space.

Products enter only through their frozen content vectors (there are no product-id
embeddings), so the tower scores products it never saw in training, brand-new arrivals
included, exactly as it scores old ones.

Model (residual on the baseline of :mod:`newarrivals.indexer.retrieval.users`):

* input: the user's last ``max_history`` events on indexed products, oldest first, each
  as (product content vector, event type, ``log1p`` of the days between the event and the
  prediction time);
* a recency- and event-weighted mean of the history vectors, the baseline of
  :class:`~newarrivals.indexer.retrieval.users.UserVectors` (its event weights and half-life
  start at the configured values and are learnt when ``learn_mean_weights``);
* a GRU (or a small transformer) over the events; a head reads its state at the most
  recent event and proposes a correction in the product space;
* output: ``normalize(mean + correction)``. The head's last layer starts at zero, so an
  untrained tower *is* the baseline; early stopping keeps the best epoch on held-out users
  and epoch 0 (the baseline) competes too, so on validation the tower matches or beats it.

Training (:func:`~newarrivals.indexer.towers.user_training.train_user_tower`): for every
user, events in time order; each event of a ``target_events`` type on a product not already
in the user's history (repeats are what the mean already captures; the tower is for
discovery) is a target, predicted from the events before it, as of the target's time. Loss:
sampled softmax over the batch's target vectors (in-batch negatives; a product appearing
twice in a batch is not its own negative) plus ``random_negatives`` products drawn uniformly
from the catalogue (in-batch negatives alone are drawn by popularity; uniform ones stand for
the long tail of the full ranking). Validation: held-out users, recall@``valid_k`` of each
target among all products (the user's history excluded), for the tower and for the
fixed-weight baseline on the same targets. The caller decides what the tower may see: pass
only pre-cutoff interactions for an evaluation.

Incremental updates: a user's vector depends only on their last ``max_history`` events, so
:class:`~newarrivals.indexer.towers.user_history.UserHistoryStore` keeps a bounded,
time-ordered history per user and one new event recomputes that user alone
(O(``max_history``) work).

Modules: settings and artifact names in :mod:`.user_config`, product vectors and event
batches in :mod:`.user_data`, the network in :mod:`.user_network`, training in
:mod:`.user_training`, incremental per-user state in :mod:`.user_history`; this module
holds :class:`UserTower`, the trained tower that serves vectors, saves and loads.

Artifact layout (one directory)::

    user_tower.json          # format, config, dim, training report, library versions
    user_tower.safetensors   # the weights (CPU tensors)

Example:
    >>> tower, report = train_user_tower(events, ids, vectors, UserTowerConfig())  # doctest: +SKIP
    >>> users, vecs = tower.user_vectors(events, ids, vectors)  # doctest: +SKIP
    >>> tower.save(Path("artifacts/user-tower"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from newarrivals.indexer.arrays import F32Array
from newarrivals.indexer.catalog.schema import Interaction
from newarrivals.indexer.errors import ConfigError, IndexIntegrityError
from newarrivals.indexer.index.version import library_versions
from newarrivals.indexer.towers.user_config import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    UserTowerConfig,
)
from newarrivals.indexer.towers.user_data import (
    ArrayProductVectors,
    EventSequences,
    ProductVectors,
    collate_histories,
    unit_rows,
)
from newarrivals.indexer.towers.user_network import UserTowerNet

__all__ = ["UserTower"]

# Users per forward pass at inference.
_INFER_BATCH: Final = 1024


class UserTower:
    """A trained user tower: histories in, unit vectors in the product space out.

    Build it with :func:`train_user_tower` or :meth:`load`.

    Example:
        >>> tower = UserTower.load(Path("artifacts/user-tower"))  # doctest: +SKIP
        >>> ids, vecs = tower.user_vectors(events, product_ids, product_vectors)  # doctest: +SKIP
        >>> store.search(vecs, k=10, filter=SearchFilter(launched_after=cutoff))  # doctest: +SKIP
    """

    def __init__(
        self,
        net: UserTowerNet,
        config: UserTowerConfig,
        dim: int,
        *,
        device: str = "cpu",
        report: Mapping[str, Any] | None = None,
    ) -> None:
        self._net = net.to(device).eval()
        self.config = config
        self.dim = dim
        self.device = device
        self.report: dict[str, Any] = dict(report or {})

    # -- inference ------------------------------------------------------------------

    def check_dim(self, dim: int) -> None:
        """Raise when product vectors of ``dim`` are not the ones the tower was trained on."""
        if dim != self.dim:
            raise IndexIntegrityError(
                f"the user tower was trained on {self.dim}-dim product vectors but was given "
                f"{dim}-dim ones; retrain it against this index with `newarrivals train-users`."
            )

    @torch.inference_mode()
    def _encode(
        self, products: F32Array, seq: EventSequences, at: npt.NDArray[np.float64]
    ) -> F32Array:
        """One vector per user of ``seq``, each predicted as of ``at[user]``."""
        matrix = torch.as_tensor(products, device=self.device)
        n = len(seq.user_ids)
        out = np.empty((n, self.dim), dtype=np.float32)
        for lo in range(0, n, _INFER_BATCH):
            hi = min(n, lo + _INFER_BATCH)
            batch = collate_histories(
                seq, seq.starts[lo:hi], seq.starts[lo + 1 : hi + 1], at[lo:hi],
                self.config.max_history, self.device,
            )  # fmt: skip
            out[lo:hi] = self._net(matrix, batch).float().cpu().numpy()
        return out

    def user_vectors(
        self,
        interactions: Iterable[Interaction],
        product_ids: Sequence[str],
        product_vectors: npt.ArrayLike,
        *,
        now: datetime | None = None,
    ) -> tuple[list[str], F32Array]:
        """Vectors for every user with at least one event on a known product.

        Args:
            interactions: Events in any order; those on unknown products are skipped.
            product_ids: Ids of the rows of ``product_vectors``.
            product_vectors: ``(len(product_ids), dim)`` content vectors.
            now: Prediction time (timezone-aware): events after it are ignored and time
                gaps are measured to it. ``None``: each user's latest event.

        Returns:
            User ids (sorted) and their ``(n_users, dim)`` float32 unit vectors.

        Raises:
            IndexIntegrityError: when ``dim`` differs from the tower's.
        """
        vectors = ArrayProductVectors(product_ids, product_vectors)
        self.check_dim(vectors.dim)
        events: Iterable[Interaction] = interactions
        if now is not None:
            _check_aware(now)
            events = (e for e in interactions if e.timestamp <= now)
        seq = EventSequences.of(events, vectors.row_of)
        if not seq.user_ids:
            return [], np.empty((0, self.dim), dtype=np.float32)
        if now is None:
            at = seq.times[seq.starts[1:] - 1]
        else:
            at = np.full(len(seq.user_ids), now.timestamp(), dtype=np.float64)
        return list(seq.user_ids), self._encode(vectors.matrix, seq, at)

    def vector_for(
        self,
        history: Sequence[Interaction],
        products: ProductVectors,
        *,
        now: datetime | None = None,
    ) -> F32Array | None:
        """One user's vector from their events (only the last ``max_history`` are read).

        Args:
            history: The user's events, any order; events on products missing from
                ``products`` (or after ``now``) are skipped.
            products: The content vectors (a ``ProductIndex`` or ``ArrayProductVectors``).
            now: Prediction time (timezone-aware); ``None``: the latest event.

        Returns:
            A ``(dim,)`` unit vector, or ``None`` when no event is on a known product.
        """
        return self.vectors_for([history], products, now=now)[0]

    def vectors_for(
        self,
        histories: Sequence[Sequence[Interaction]],
        products: ProductVectors,
        *,
        now: datetime | None = None,
    ) -> list[F32Array | None]:
        """:meth:`vector_for` for many users in batched forward passes."""
        self.check_dim(products.dim)
        if now is not None:
            _check_aware(now)
        kept: list[list[Interaction]] = []
        for events in histories:
            usable = [
                e
                for e in events
                if e.product_id in products and (now is None or e.timestamp <= now)
            ]
            usable.sort(key=lambda e: e.timestamp)
            kept.append(usable[-self.config.max_history :])
        ids = list(dict.fromkeys(e.product_id for events in kept for e in events))
        if not ids:
            return [None] * len(histories)
        matrix = unit_rows(np.asarray(products.vectors_for(ids), dtype=np.float32))
        row_of = {p: i for i, p in enumerate(ids)}
        # Key each history by its position so EventSequences keeps them apart and in order.
        width = len(str(len(kept)))
        seq = EventSequences.of(
            (
                Interaction(f"{i:0{width}d}", e.product_id, e.event, e.timestamp)
                for i, events in enumerate(kept)
                for e in events
            ),
            row_of,
        )
        if now is None:
            at = seq.times[seq.starts[1:] - 1]
        else:
            at = np.full(len(seq.user_ids), now.timestamp(), dtype=np.float64)
        encoded = self._encode(matrix, seq, at)
        out: list[F32Array | None] = [None] * len(histories)
        for row, key in enumerate(seq.user_ids):
            out[int(key)] = encoded[row]
        return out

    # -- persistence ----------------------------------------------------------------

    def save(self, directory: Path) -> Path:
        """Write the weights (safetensors) and the manifest into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self._net.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "config": self.config.to_dict(),
            "report": self.report,
            "n_parameters": int(sum(v.numel() for v in state.values())),
            "library_versions": library_versions(),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(
        cls, directory: Path, device: str = "cpu", *, expected_dim: int | None = None
    ) -> UserTower:
        """Load a saved tower and check its invariants.

        Args:
            directory: What :meth:`save` wrote.
            device: A resolved torch device (``cpu``, ``cuda``, ``cuda:N``).
            expected_dim: The product vectors' dimension, checked when given.

        Raises:
            IndexIntegrityError: missing files, an unknown format, weights that disagree
                with the manifest, or ``expected_dim`` that differs from the tower's.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        manifest_path, weights_path = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
        for path in (manifest_path, weights_path):
            if not path.is_file():
                raise IndexIntegrityError(
                    f"no user tower at {directory}: {path.name} is missing; train one with "
                    "`newarrivals train-users`."
                )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise IndexIntegrityError(
                f"{manifest_path} has format {manifest.get('format')!r} version "
                f"{manifest.get('format_version')!r}; this code reads {FORMAT!r} version "
                f"{FORMAT_VERSION}. Retrain with `newarrivals train-users`."
            )
        config = UserTowerConfig.from_dict(manifest["config"])
        dim = int(manifest["dim"])
        state = load_file(str(weights_path), device="cpu")
        weight_dim = int(state["out.weight"].shape[0]) if "out.weight" in state else -1
        if weight_dim != dim:
            raise IndexIntegrityError(
                f"{weights_path} outputs {weight_dim}-dim vectors but the manifest says "
                f"{dim}; the artifact is corrupt, retrain it."
            )
        net = UserTowerNet(dim, config)  # the saved weights overwrite the temperature
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise IndexIntegrityError(
                f"{weights_path} does not match the configured architecture: missing "
                f"{sorted(missing)}, unexpected {sorted(unexpected)}."
            )
        tower = cls(net, config, dim, device=device, report=manifest.get("report"))
        if expected_dim is not None:
            tower.check_dim(expected_dim)
        return tower


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ConfigError(
            f"now must be timezone-aware, got naive {now.isoformat()}; add tzinfo=UTC."
        )
