"""A learned blend of the ranker's score with the retrieval stage's own signals.

The cross-encoder reads text only; the retrieval stage also knows how similar a candidate's
photo is to what the user bought, and how it ranked the candidate in the first place. The
blend is a linear scorer over per-list standardised features,

    s_i = sum_f w_f * (x_if - mean_j x_jf) / std_j x_jf,

fitted on validation lists (never on the lists the ranker was trained on, never on the test
period) by minimising the listwise softmax cross-entropy of the relevant candidates,

    L(w) = mean over lists of mean over relevant i of [logsumexp_j s_j - s_i]
           + (l2 / n_lists) * |w - prior|^2,

which is convex in ``w`` (each relevant candidate is one softmax term), so a damped Newton
method finds the optimum in a few steps. The penalty pulls ``w`` towards a ``prior``
(e.g. "retrieval alone": weight 1 on the retrieval score, 0 elsewhere) with a strength worth
``l2`` lists, ``(l2 / n_lists) * |w - prior|^2``: with the few dozen validation lists a small
catalogue gives, the blend stays near the prior unless the lists clearly say otherwise
(with 18 H&M lists and no prior it overfitted to half the retrieval NDCG on held-out users).
The prior need not be "retrieval alone":
:func:`~newarrivals.ranker.training.rerank_blend.fit_rerank_blend` first fits the
features without the ranker on many more lists and uses that as the prior
(:meth:`Blend.prior_blend` gives it back as a blend of its own).
Standardising each feature within its list makes the weights comparable across features
and free of the ranker's logit scale; a feature that is constant within a list contributes
nothing to it.

A blend is stored as ``blend.json`` (feature names, weights, how it was fitted) next to the
ranker it was fitted for: weights fitted for one ranker do not transfer to another.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import BoolArray, F64Array
from newarrivals.indexer.errors import ConfigError, IndexIntegrityError
from newarrivals.indexer.validation import require_int

__all__ = [
    "BLEND_FILE",
    "Blend",
    "BlendList",
    "fit_blend",
    "holdout_warning",
    "standardise",
]

BLEND_FILE: Final = "blend.json"
BLEND_FORMAT_VERSION: Final = 1
HOLDOUT_KEY: Final = "holdout"


def standardise(features: npt.ArrayLike) -> F64Array:
    """Each column minus its mean over the rows, over its standard deviation (0 if constant).

    Example:
        >>> standardise([[1.0, 5.0], [3.0, 5.0]]).tolist()
        [[-1.0, 0.0], [1.0, 0.0]]
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError(f"features must be a 2-d (candidates, features) array, got {x.shape}.")
    if not np.isfinite(x).all():
        raise ConfigError(
            "features hold NaN or infinite values; replace a missing feature with a finite "
            "value (e.g. the list minimum) before blending."
        )
    centred = x - x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True)
    out: F64Array = np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-12)
    return out


@dataclass(frozen=True, eq=False)
class BlendList:
    """One list for fitting or checking a blend: raw features and which rows are relevant.

    Attributes:
        features: ``(n_candidates, n_features)`` raw feature values.
        relevant: ``(n_candidates,)`` True for the candidates the user really took.
    """

    features: F64Array
    relevant: BoolArray

    def __post_init__(self) -> None:
        f = np.asarray(self.features, dtype=np.float64)
        r = np.asarray(self.relevant, dtype=bool)
        if f.ndim != 2 or r.shape != (f.shape[0],):
            raise ConfigError(
                f"a blend list needs (n, features) features and (n,) relevance flags, got "
                f"{f.shape} and {r.shape}."
            )
        object.__setattr__(self, "features", f)
        object.__setattr__(self, "relevant", r)


@dataclass(frozen=True)
class Blend:
    """A linear blend of per-list standardised features (see the module docstring).

    Args:
        features: Feature names, in column order (e.g. ``("ranker", "retrieval", "image")``).
        weights: One weight per feature.
        l2: The penalty strength it was fitted with (in lists).
        n_lists: How many lists it was fitted on.
        prior: The weights the penalty pulled towards (empty: zeros).
        fitted_on: A short description of the fitting lists (for the manifest).
        retrieval: The first stage whose score is the ``retrieval`` feature (e.g.
            ``fused-concat/mean``, the serving index's own); "" when not recorded.

    Example:
        >>> blend = Blend(("ranker", "retrieval"), (0.0, 1.0))
        >>> blend.score([[9.0, 0.1], [1.0, 0.3]]).argmax()
        np.int64(1)
    """

    features: tuple[str, ...]
    weights: tuple[float, ...]
    l2: float = 0.0
    n_lists: int = 0
    fitted_on: str = ""
    prior: tuple[float, ...] = ()
    retrieval: str = ""

    def __post_init__(self) -> None:
        names = tuple(self.features)
        weights = tuple(float(w) for w in self.weights)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"blend features must be distinct names, got {names!r}.")
        if len(weights) != len(names):
            raise ConfigError(
                f"a blend needs one weight per feature: {len(names)} features {names!r}, "
                f"{len(weights)} weights."
            )
        if not all(math.isfinite(w) for w in weights):
            raise ConfigError(f"blend weights must be finite, got {weights!r}.")
        object.__setattr__(self, "features", names)
        object.__setattr__(self, "weights", weights)

    @property
    def weight(self) -> Mapping[str, float]:
        """The weights by feature name."""
        return dict(zip(self.features, self.weights, strict=True))

    def prior_blend(self) -> Blend | None:
        """The prior as a blend of its own (same features), or ``None`` when the prior is
        empty or "retrieval alone" (one feature weighted, so the same order as that feature).

        :func:`~newarrivals.ranker.training.rerank_blend.blend_for_ranker` fits the prior on the
        features without the ranker
        first, so this is "the features blend without the ranker".

        Example:
            >>> Blend(("ranker", "retrieval", "image"), (0.3, 1.0, 0.2),
            ...       prior=(0.0, 1.0, 0.1)).prior_blend().weights
            (0.0, 1.0, 0.1)
        """
        if sum(1 for w in self.prior if w != 0) < 2:
            return None
        return Blend(
            self.features,
            self.prior,
            fitted_on=f"the prior of: {self.fitted_on}",
            retrieval=self.retrieval,
        )

    def score(self, features: npt.ArrayLike) -> F64Array:
        """Blended scores of one list's candidates from their raw ``(n, f)`` features."""
        x = standardise(features)
        if x.shape[1] != len(self.features):
            raise ConfigError(
                f"this blend reads {len(self.features)} features {self.features!r}, got "
                f"{x.shape[1]} columns."
            )
        out: F64Array = x @ np.asarray(self.weights, dtype=np.float64)
        return out

    def nll(self, lists: Sequence[BlendList]) -> float:
        """Mean listwise cross-entropy of the relevant candidates (lists without any skipped)."""
        return _objective(np.asarray(self.weights), _prepare(lists, len(self.features)), 0.0)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": BLEND_FORMAT_VERSION,
            "features": list(self.features),
            "weights": list(self.weights),
            "l2": self.l2,
            "n_lists": self.n_lists,
            "fitted_on": self.fitted_on,
            "prior": list(self.prior),
            "retrieval": self.retrieval,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Blend:
        if data.get("format_version") != BLEND_FORMAT_VERSION:
            raise IndexIntegrityError(
                f"blend format {data.get('format_version')!r}, this code reads "
                f"{BLEND_FORMAT_VERSION}; refit the blend (newarrivals train-ranker)."
            )
        return cls(
            features=tuple(data["features"]),
            weights=tuple(data["weights"]),
            l2=float(data.get("l2", 0.0)),
            n_lists=int(data.get("n_lists", 0)),
            fitted_on=str(data.get("fitted_on", "")),
            prior=tuple(float(p) for p in data.get("prior", ())),
            retrieval=str(data.get("retrieval", "")),
        )

    def save(self, directory: Path, *, holdout: Mapping[str, Any] | None = None) -> Path:
        """Write ``blend.json`` into ``directory`` (a ranker artifact); returns the file.

        ``holdout``: how the orders compared on held-out lists (``ndcg_retrieval``,
        ``ndcg_ranker``, ...), kept for :func:`holdout_warning`.
        """
        path = Path(directory) / BLEND_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if holdout is not None:
            data[HOLDOUT_KEY] = dict(holdout)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: Path) -> Blend | None:
        """The blend stored in ``directory``, or ``None`` when it holds none."""
        data = _read(directory)
        return None if data is None else cls.from_dict(data)


def _read(directory: Path) -> dict[str, Any] | None:
    """``blend.json`` of ``directory`` as JSON, or ``None`` when there is none."""
    path = Path(directory) / BLEND_FILE
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def holdout_warning(directory: Path, *, blended: bool = False, why_not: str = "") -> str | None:
    """A warning when the order serving will use lost to the retrieval order on the
    ranker's holdout re-rank lists (as ``train-ranker`` recorded them in ``blend.json``);
    ``None`` when it did not, or when nothing was recorded.

    Args:
        directory: The ranker artifact.
        blended: Serving re-ranks by the blend (else by the ranker's probabilities alone).
        why_not: Why the blend is not applied (said in the warning).
    """
    holdout = (_read(directory) or {}).get(HOLDOUT_KEY) or {}
    key, what = ("ndcg_blend", "the blend") if blended else ("ndcg_ranker", "the ranker alone")
    ours, retrieval = holdout.get(key), holdout.get("ndcg_retrieval")
    if not isinstance(ours, int | float) or not isinstance(retrieval, int | float):
        return None
    if not ours < retrieval:
        return None
    blend_says = "" if blended or not why_not else f" The blend is not applied: {why_not}."
    return (
        f"{what} ordered its {holdout.get('n_holdout_lists', '?')} holdout re-rank lists at "
        f"NDCG@{holdout.get('k', '?')} {ours:.3f} against {retrieval:.3f} for the retrieval "
        "order: rerank=true is likely to lower quality with it; keep rerank off or train a "
        f"better ranker.{blend_says}"
    )


@dataclass(frozen=True, eq=False)
class _Prepared:
    """Standardised lists, stacked: rows of every list, each row's list, relevance weights."""

    x: F64Array
    list_of_row: npt.NDArray[np.int64]
    target: F64Array  # each relevant row 1/|relevant of its list|, others 0
    n_lists: int


def _prepare(lists: Sequence[BlendList], n_features: int) -> _Prepared:
    xs: list[F64Array] = []
    owners: list[npt.NDArray[np.int64]] = []
    targets: list[F64Array] = []
    kept = 0
    for lst in lists:
        if lst.features.shape[1] != n_features:
            raise ConfigError(
                f"every blend list needs {n_features} feature columns, got {lst.features.shape[1]}."
            )
        n_rel = int(lst.relevant.sum())
        if n_rel == 0 or n_rel == len(lst.relevant):
            continue  # nothing to learn from a list without a choice
        xs.append(standardise(lst.features))
        owners.append(np.full(len(lst.relevant), kept, dtype=np.int64))
        targets.append(lst.relevant.astype(np.float64) / n_rel)
        kept += 1
    if not kept:
        return _Prepared(np.zeros((0, n_features)), np.zeros(0, dtype=np.int64), np.zeros(0), 0)
    return _Prepared(np.concatenate(xs), np.concatenate(owners), np.concatenate(targets), kept)


def _objective(
    w: F64Array, data: _Prepared, l2: float, prior: F64Array | None = None
) -> tuple[float, F64Array, F64Array]:
    """Loss, gradient and Hessian of the blend objective at ``w`` (``l2`` per list here)."""
    d = w.shape[0]
    delta = w - (prior if prior is not None else 0.0)
    if data.n_lists == 0:
        return 0.0, np.zeros(d), np.eye(d) * 2 * l2
    s = data.x @ w
    # A stable per-list softmax: subtract each list's maximum.
    list_max = np.full(data.n_lists, -np.inf)
    np.maximum.at(list_max, data.list_of_row, s)
    e = np.exp(s - list_max[data.list_of_row])
    norm = np.bincount(data.list_of_row, weights=e, minlength=data.n_lists)
    p = e / norm[data.list_of_row]
    log_norm = np.log(norm) + list_max
    loss = float(np.sum(log_norm) - data.target @ s) / data.n_lists + l2 * float(delta @ delta)
    grad = data.x.T @ (p - data.target) / data.n_lists + 2 * l2 * delta
    # Hessian: sum over lists of X^T (diag p - p p^T) X.
    xp = data.x * p[:, None]
    weighted = np.zeros((data.n_lists, d))
    np.add.at(weighted, data.list_of_row, xp)
    hess = (data.x.T @ xp - weighted.T @ weighted) / data.n_lists + 2 * l2 * np.eye(d)
    return loss, grad, hess


def fit_blend(
    lists: Sequence[BlendList],
    features: Sequence[str],
    *,
    l2: float = 1.0,
    prior: Sequence[float] | None = None,
    max_iter: int = 100,
    fitted_on: str = "",
    free: Sequence[str] | None = None,
    retrieval: str = "",
) -> Blend:
    """Fit blend weights on ``lists`` (damped Newton on the convex objective above).

    Args:
        lists: Validation lists; a list with no relevant candidate (or only relevant ones)
            teaches nothing and is skipped.
        features: The feature names, in column order.
        l2: Penalty strength, worth this many lists (keeps an uninformative feature at its
            prior weight).
        prior: Weights to shrink towards (default: all zero).
        max_iter: Newton iterations at most.
        fitted_on: A description of ``lists`` for the manifest.
        free: Fit only these features; the others keep their prior weight (``None``: fit
            all). Few lists can fit one weight where they would overfit five.
        retrieval: The first stage the ``retrieval`` feature came from (recorded only).

    Returns:
        The fitted blend.

    Raises:
        ConfigError: when no list has a choice to learn from, or a bad setting.
    """
    names = tuple(features)
    require_int("max_iter", max_iter)
    if isinstance(l2, bool) or not isinstance(l2, int | float) or not l2 >= 0:
        raise ConfigError(f"l2 must be a number >= 0, got {l2!r}.")
    if prior is not None and len(prior) != len(names):
        raise ConfigError(
            f"the prior needs one weight per feature: {len(names)} features, {len(prior)} "
            "prior weights."
        )
    centre = None if prior is None else np.asarray(prior, dtype=np.float64)
    if free is not None:
        unknown = sorted(set(free) - set(names))
        if unknown or not free:
            raise ConfigError(
                f"free must name at least one of the blend features {names!r}, got {list(free)!r}."
            )
    mask = np.array([free is None or n in free for n in names])
    data = _prepare(lists, len(names))
    if data.n_lists == 0:
        raise ConfigError(
            f"none of the {len(lists)} blend lists holds both a relevant and an irrelevant "
            "candidate; fit the blend on lists where retrieval found the user's item."
        )
    per_list = float(l2) / data.n_lists
    w = np.zeros(len(names)) if centre is None else centre.copy()
    loss, grad, hess = _objective(w, data, per_list, centre)
    for _ in range(max_iter):
        step = np.zeros(len(names))
        sub = np.ix_(mask, mask)
        step[mask] = np.linalg.solve(hess[sub] + 1e-9 * np.eye(int(mask.sum())), grad[mask])
        t = 1.0
        while t > 1e-6:
            candidate = w - t * step
            new_loss, new_grad, new_hess = _objective(candidate, data, per_list, centre)
            if new_loss <= loss - 1e-4 * t * float(grad @ step):
                break
            t /= 2
        else:
            break
        converged = loss - new_loss < 1e-10
        w, loss, grad, hess = candidate, new_loss, new_grad, new_hess
        if converged or float(np.abs(grad[mask]).max()) < 1e-8:
            break
    return Blend(
        names,
        tuple(w.tolist()),
        l2=float(l2),
        n_lists=data.n_lists,
        fitted_on=fitted_on,
        prior=() if centre is None else tuple(centre.tolist()),
        retrieval=retrieval,
    )
