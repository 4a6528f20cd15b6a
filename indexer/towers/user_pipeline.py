"""The ``train-users`` job: a user tower trained on a catalogue's interactions over an
index version's product vectors, saved as an artifact.

Example:
    >>> config = TrainUsersConfig(index=Path("idx"), catalog=Path("cat"), out=Path("users"))
    >>> result = train_users(config)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.version import IndexVersion
from newarrivals.indexer.towers.user_config import UserTowerConfig
from newarrivals.indexer.towers.user_training import train_user_tower

__all__ = ["TrainUsersConfig", "TrainUsersResult", "train_users"]


@dataclass(frozen=True)
class TrainUsersConfig:
    """What the ``train-users`` job reads, writes and how it trains.

    Args:
        index: Index root or version directory whose product vectors the tower maps into.
        catalog: Catalogue holding the interactions.
        out: Artifact directory to write.
        tower: The tower's architecture and training settings (its ``device`` resolved).
        before: Train only on interactions strictly before this moment (timezone-aware).
    """

    index: Path
    catalog: Path
    out: Path
    tower: UserTowerConfig = field(default_factory=UserTowerConfig)
    before: datetime | None = None

    def __post_init__(self) -> None:
        if self.before is not None and self.before.tzinfo is None:
            raise ConfigError(
                f"before must be timezone-aware, got naive {self.before.isoformat()}; "
                "attach a timezone (e.g. UTC)."
            )


@dataclass(frozen=True)
class TrainUsersResult:
    """Where the tower went, which index version it maps into, and its training summary."""

    artifact: Path
    index_version: str
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), "index": self.index_version, **self.summary}


def train_users(config: TrainUsersConfig) -> TrainUsersResult:
    """Train a user tower on ``config.catalog``'s interactions and save it to ``config.out``.

    Returns:
        The artifact path, the index version and the training report without its
        per-epoch history.
    """
    version = IndexVersion.load(config.index)
    events = read_catalog(config.catalog).interactions
    if config.before is not None:
        before = config.before
        events = [e for e in events if e.timestamp < before]
    ids = version.store.product_ids()
    tower, report = train_user_tower(events, ids, version.store.vectors_for(ids), config.tower)
    out = tower.save(config.out)
    summary = {k: v for k, v in report.items() if k != "history"}
    return TrainUsersResult(artifact=out, index_version=version.version, summary=summary)
