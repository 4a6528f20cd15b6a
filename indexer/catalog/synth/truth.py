"""The hidden state behind a synthetic catalogue, and its ``ground_truth.json`` file.

Shoppers' tastes, products' attributes and appeal: enough to compute the utility every
shopper has for every product, so a recommender can be scored against the ideal ranking.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.catalog.schema import Catalog
from newarrivals.indexer.catalog.synth.config import SynthConfig
from newarrivals.indexer.catalog.synth.vocabulary import TASTE_ATTRIBUTES, attribute_values
from newarrivals.indexer.errors import CatalogError

__all__ = ["GROUND_TRUTH_FILE", "GroundTruth", "SyntheticCatalog", "load_ground_truth"]

GROUND_TRUTH_FILE = "ground_truth.json"
_GROUND_TRUTH_VERSION = 1


@dataclass(frozen=True)
class GroundTruth:
    """The hidden state behind a synthetic catalogue: what a perfect recommender would know.

    ``user_tastes[user][attribute][value]`` is the probability the shopper gives that
    attribute value (each inner dict sums to 1). ``product_appeal`` is the per-product term
    every shopper shares. :meth:`true_utility` combines them exactly as the simulator did.
    """

    config: SynthConfig
    cutoff: datetime
    new_arrival_ids: tuple[str, ...]
    user_tastes: dict[str, dict[str, dict[str, float]]]
    product_attributes: dict[str, dict[str, str]]
    product_appeal: dict[str, float]

    def true_utility(self, user_id: str, product_id: str) -> float:
        """The shopper's utility for the product: sum of log-tastes plus the product's appeal.

        Choice probabilities among available products are ``softmax(utility / temperature)``.

        Raises:
            KeyError: if the user or product is unknown.
        """
        tastes = self.user_tastes[user_id]
        attrs = self.product_attributes[product_id]
        return self.product_appeal[product_id] + sum(
            math.log(tastes[a][attrs[a]]) for a in TASTE_ATTRIBUTES
        )

    def relevance_matrix(self, user_ids: Sequence[str], product_ids: Sequence[str]) -> F64Array:
        """True utilities, shape ``(len(user_ids), len(product_ids))``; higher is better."""
        out = np.zeros((len(user_ids), len(product_ids)))
        out += np.array([self.product_appeal[p] for p in product_ids])[None, :]
        for attribute in TASTE_ATTRIBUTES:
            values = attribute_values(attribute)
            position = {v: i for i, v in enumerate(values)}
            log_taste = np.log(
                np.array([[self.user_tastes[u][attribute][v] for v in values] for u in user_ids])
            )
            idx = np.array(
                [position[self.product_attributes[p][attribute]] for p in product_ids],
                dtype=np.int64,
            )
            out += log_taste[:, idx]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": _GROUND_TRUTH_VERSION,
            "config": self.config.to_dict(),
            "cutoff": self.cutoff.isoformat(),
            "new_arrival_ids": list(self.new_arrival_ids),
            "user_tastes": self.user_tastes,
            "product_attributes": self.product_attributes,
            "product_appeal": self.product_appeal,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroundTruth:
        version = data.get("format_version")
        if version != _GROUND_TRUTH_VERSION:
            raise CatalogError(
                f"Ground truth format_version {version!r} is not supported; expected "
                f"{_GROUND_TRUTH_VERSION}. Regenerate it with write_synthetic()."
            )
        return cls(
            config=SynthConfig.from_dict(data["config"]),
            cutoff=datetime.fromisoformat(data["cutoff"]),
            new_arrival_ids=tuple(data["new_arrival_ids"]),
            user_tastes=data["user_tastes"],
            product_attributes=data["product_attributes"],
            product_appeal={k: float(v) for k, v in data["product_appeal"].items()},
        )


@dataclass
class SyntheticCatalog:
    """A generated catalogue plus the ground truth that produced it.

    Products with a photo carry ``image="images/<product_id>.png"`` (relative, not yet
    drawn) until :func:`write_synthetic` draws them and sets absolute paths.

    Example:
        >>> synth = generate(SynthConfig(n_products=60, n_users=4, seed=1))
        >>> user = next(iter(synth.user_tastes))
        >>> isinstance(synth.true_utility(user, synth.new_arrival_ids[0]), float)
        True
    """

    catalog: Catalog
    truth: GroundTruth

    @property
    def config(self) -> SynthConfig:
        return self.truth.config

    @property
    def cutoff(self) -> datetime:
        return self.truth.cutoff

    @property
    def new_arrival_ids(self) -> list[str]:
        return list(self.truth.new_arrival_ids)

    @property
    def user_tastes(self) -> dict[str, dict[str, dict[str, float]]]:
        return self.truth.user_tastes

    def true_utility(self, user_id: str, product_id: str) -> float:
        """See :meth:`GroundTruth.true_utility`."""
        return self.truth.true_utility(user_id, product_id)

    def relevance_matrix(self, user_ids: Sequence[str], product_ids: Sequence[str]) -> F64Array:
        """See :meth:`GroundTruth.relevance_matrix`."""
        return self.truth.relevance_matrix(user_ids, product_ids)


def load_ground_truth(path: Path) -> GroundTruth:
    """Read ``ground_truth.json`` written by :func:`write_synthetic`.

    Args:
        path: The JSON file, or the directory holding it.

    Raises:
        CatalogError: if the file is missing or of an unsupported version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / GROUND_TRUTH_FILE
    if not path.is_file():
        raise CatalogError(
            f"No ground truth at {path}; write one with write_synthetic(generate(config), dir)."
        )
    return GroundTruth.from_dict(json.loads(path.read_text(encoding="utf-8")))
