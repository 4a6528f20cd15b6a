"""The blend's feature matrix for one candidate list, the same at training and at request time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.errors import ConfigError

__all__ = ["candidate_features"]


def candidate_features(columns: Mapping[str, npt.ArrayLike], names: Sequence[str]) -> F64Array:
    """An ``(n, len(names))`` feature matrix from per-candidate columns.

    A non-finite value (a candidate a modality cannot score) becomes the column's smallest
    finite value, so it ranks last on that feature without breaking the standardisation.

    Raises:
        ConfigError: naming a feature that is not among ``columns``.
    """
    out: list[F64Array] = []
    for name in names:
        if name not in columns:
            raise ConfigError(
                f"blend feature {name!r} is not available here (have {sorted(columns)}); an "
                "image feature needs --image-tower."
            )
        col = np.asarray(columns[name], dtype=np.float64).copy()
        finite = np.isfinite(col)
        col[~finite] = col[finite].min() if finite.any() else 0.0
        out.append(col)
    return np.stack(out, axis=1)
