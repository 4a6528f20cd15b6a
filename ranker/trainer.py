"""Fine-tuning the cross-encoder on lists built from interactions, and calibrating it.

**Lists.** Interactions are replayed in time order through the retrieval stage's user
vectors (:class:`~newarrivals.indexer.users.UserVectors`). At each positive event (a
purchase by default) the user's state *just before it* gives the context (their recent
products, newest first, the positive itself left out) and the retrieval query (their
vector then). A list is the positive, ``hard_negatives`` drawn at random from the top
``retrieval_candidates`` the index returns for that query (context products and the
positive removed), and ``random_negatives`` from the whole catalogue, shuffled.

**Training.** Listwise softmax cross-entropy (the positive's negative log-probability under
the softmax over its list), AdamW, gradient clipping at 1, and early stopping on the
validation NDCG@k (lists of held-out users); the best epoch's weights are kept.

**Calibration.** The temperature ``T`` minimises the validation NLL of the positive (a
1-d search over ``log T``: a grid, then golden-section refinement). The reported expected
calibration error is the **top-1** ECE: per list, the confidence is the largest
probability and the outcome whether that candidate is the positive; lists are put in
``ece_bins`` equal-width confidence bins and ECE = sum over bins of (share of lists) x
|accuracy - mean confidence|. ``T`` is fitted and ECE reported on the same validation
lists (one parameter, so the in-sample optimism is small; say so when you quote it).

NDCG with one relevant item is ``1 / log2(1 + rank)`` when ``rank <= k``, else 0; tied
scores count as the average over the tied positions (so a constant scorer is not
rewarded or punished by the order of the list).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.errors import CatalogError
from newarrivals.indexer.schema import Interaction, Product
from newarrivals.indexer.store import ProductIndex
from newarrivals.indexer.users import UserVectors

from .config import RankerConfig, RankerTrainConfig
from .context import candidate_text, context_text, encode_texts
from .model import CrossEncoderRanker, softmax

__all__ = [
    "EpochRecord",
    "RankerTrainingReport",
    "TrainingList",
    "build_training_lists",
    "expected_calibration_error",
    "fit_ranker",
    "fit_temperature",
    "list_nll",
    "list_scores",
    "ndcg_at_k",
    "split_by_user",
    "train_ranker",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainingList:
    """One listwise training example.

    Attributes:
        user_id: Whose list it is.
        context_ids: The user's recent products before the positive, newest first.
        candidate_ids: The positive and the negatives, shuffled.
        positive: Index of the positive in ``candidate_ids``.
    """

    user_id: str
    context_ids: tuple[str, ...]
    candidate_ids: tuple[str, ...]
    positive: int


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: its mean training loss and the validation NDCG@k after it."""

    epoch: int
    train_loss: float
    val_ndcg: float
    seconds: float


@dataclass(frozen=True)
class RankerTrainingReport:
    """What a training run did and how the ranker scores on the validation lists."""

    n_train_lists: int
    n_val_lists: int
    list_size: int
    ndcg_k: int
    ndcg_before: float
    ndcg_after: float
    best_epoch: int
    epochs_run: int
    stop_reason: str
    temperature: float
    nll_before_temperature: float
    nll_after_temperature: float
    ece_before_temperature: float
    ece_after_temperature: float
    ece_kind: str
    seconds: float
    history: tuple[EpochRecord, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [asdict(h) for h in self.history]
        return data


# -- lists --------------------------------------------------------------------------


def build_training_lists(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    store: ProductIndex,
    config: RankerTrainConfig,
    *,
    max_context_items: int = 10,
) -> list[TrainingList]:
    """Lists from ``events`` (pass only those before the cutoff); see the module docstring.

    Raises:
        CatalogError: when the catalogue has too few products for one list.
    """
    rng = np.random.default_rng(config.seed)
    pool = [pid for pid in products if pid in store]
    if len(pool) < config.list_size:
        raise CatalogError(
            f"a training list needs {config.list_size} products but only {len(pool)} catalogue "
            "products are indexed; index more products or lower hard/random negatives."
        )
    users = UserVectors(store, recent_limit=max_context_items + 1)
    positive_events = set(config.positive_events)
    # (user, context, positive, query vector) at each positive event, before folding it in.
    pending: dict[str, list[tuple[tuple[str, ...], str, npt.NDArray[np.float32]]]] = {}
    for event in sorted(events, key=lambda e: (e.timestamp, e.user_id)):
        if (
            event.event in positive_events
            and event.product_id in products
            and event.product_id in store
        ):
            state = users.state(event.user_id)
            vector = users.vector(event.user_id)
            if state is not None and vector is not None:
                context = tuple(p for p in state.recent if p != event.product_id)
                context = tuple(p for p in context if p in products)[:max_context_items]
                if context:
                    pending.setdefault(event.user_id, []).append(
                        (context, event.product_id, vector.astype(np.float32))
                    )
        users.update(event)

    rows = [
        (user_id, context, positive, vector)
        for user_id in sorted(pending)
        for context, positive, vector in pending[user_id][-config.max_lists_per_user :]
    ]
    if not rows:
        return []
    k = min(len(store), config.retrieval_candidates + max_context_items + 1)
    hits = store.search(np.stack([r[3] for r in rows]), k)
    lists: list[TrainingList] = []
    for (user_id, context, positive, _), found in zip(rows, hits, strict=True):
        banned = {positive, *context}
        retrieved = [c.product_id for c in found if c.product_id not in banned]
        retrieved = [p for p in retrieved if p in products][: config.retrieval_candidates]
        n_hard = min(config.hard_negatives, len(retrieved))
        picks = rng.permutation(len(retrieved))[:n_hard].tolist()
        negatives = [retrieved[i] for i in picks]
        banned.update(negatives)
        want = config.list_size - 1 - len(negatives)
        while want > 0:
            draw = pool[int(rng.integers(len(pool)))]
            if draw not in banned:
                negatives.append(draw)
                banned.add(draw)
                want -= 1
        at = int(rng.integers(config.list_size))
        order = [negatives[int(i)] for i in rng.permutation(len(negatives))]
        order.insert(at, positive)
        lists.append(TrainingList(user_id, context, tuple(order), at))
    return lists


def split_by_user(
    lists: Sequence[TrainingList], val_fraction: float, seed: int
) -> tuple[list[TrainingList], list[TrainingList]]:
    """Train and validation lists, split by user (a user's lists stay on one side).

    Raises:
        CatalogError: when fewer than two users have lists.
    """
    users = sorted({lst.user_id for lst in lists})
    if len(users) < 2:
        raise CatalogError(
            f"training needs lists from at least 2 users (one for validation), got {len(users)}; "
            "use more interactions or include more positive event types."
        )
    rng = np.random.default_rng(seed)
    shuffled = [users[int(i)] for i in rng.permutation(len(users))]
    n_val = min(len(users) - 1, max(1, round(val_fraction * len(users))))
    val_users = set(shuffled[:n_val])
    train = [lst for lst in lists if lst.user_id not in val_users]
    val = [lst for lst in lists if lst.user_id in val_users]
    return train, val


# -- metrics ------------------------------------------------------------------------


def ndcg_at_k(scores: FloatArray, positives: IntArray, k: int) -> float:
    """Mean NDCG@k over lists with one relevant item each (ties averaged)."""
    if scores.shape[0] == 0:
        return 0.0
    pos = scores[np.arange(scores.shape[0]), positives][:, None]
    above = (scores > pos).sum(axis=1)
    tied = (scores == pos).sum(axis=1)  # includes the positive itself
    total = 0.0
    for a, t in zip(above.tolist(), tied.tolist(), strict=True):
        ranks = range(a + 1, a + t + 1)
        total += sum(1.0 / math.log2(1 + r) for r in ranks if r <= k) / t
    return total / int(scores.shape[0])


def list_nll(scores: FloatArray, positives: IntArray, temperature: float = 1.0) -> float:
    """Mean negative log-probability of the positive under the softmax over its list."""
    z = scores / temperature
    m = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    return float(np.mean(log_norm - z[np.arange(z.shape[0]), positives]))


def expected_calibration_error(probs: FloatArray, positives: IntArray, n_bins: int = 10) -> float:
    """Top-1 ECE: bins of the top probability vs whether the top candidate is the positive."""
    if probs.shape[0] == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == positives).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - conf[members].mean())
    return float(ece)


def fit_temperature(scores: FloatArray, positives: IntArray) -> float:
    """The temperature minimising :func:`list_nll` (grid over log T, then golden section)."""
    if scores.shape[0] == 0:
        return 1.0
    grid = np.linspace(math.log(1e-3), math.log(1e3), 121)
    nll = [list_nll(scores, positives, math.exp(g)) for g in grid]
    best = int(np.argmin(nll))
    lo, hi = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a = hi - ratio * (hi - lo)
        b = lo + ratio * (hi - lo)
        if list_nll(scores, positives, math.exp(a)) <= list_nll(scores, positives, math.exp(b)):
            hi = b
        else:
            lo = a
    fitted = math.exp((lo + hi) / 2.0)
    # Never return something worse than the best grid point (flat or noisy objective).
    if list_nll(scores, positives, fitted) > nll[best]:
        fitted = math.exp(grid[best])
    return fitted


# -- scoring lists ------------------------------------------------------------------


class _Tokens:
    """Token ids of every product and context the lists need, tokenised once."""

    def __init__(
        self,
        ranker: CrossEncoderRanker,
        lists: Sequence[TrainingList],
        products: Mapping[str, Product],
    ) -> None:
        ids = sorted({pid for lst in lists for pid in lst.candidate_ids})
        encoded = ranker.encode_candidates([candidate_text(products[p]) for p in ids])
        self.product: dict[str, list[int]] = dict(zip(ids, encoded, strict=True))
        contexts = sorted({lst.context_ids for lst in lists})
        texts = [
            context_text([products[p] for p in c], ranker.config.max_context_items)
            for c in contexts
        ]
        encoded_ctx = encode_texts(ranker.tokenizer, texts, ranker.config.context_tokens)
        self.context: dict[tuple[str, ...], list[int]] = dict(
            zip(contexts, encoded_ctx, strict=True)
        )

    def pairs(self, lists: Sequence[TrainingList]) -> list[tuple[list[int], list[int]]]:
        return [
            (self.context[lst.context_ids], self.product[pid])
            for lst in lists
            for pid in lst.candidate_ids
        ]


def _check_lists(lists: Sequence[TrainingList], products: Mapping[str, Product]) -> int:
    sizes = {len(lst.candidate_ids) for lst in lists}
    if len(sizes) > 1:
        raise CatalogError(f"training lists must all have one size, got sizes {sorted(sizes)}.")
    missing = {p for lst in lists for p in (*lst.candidate_ids, *lst.context_ids)} - set(products)
    if missing:
        raise CatalogError(
            f"{len(missing)} products in the lists are not in the catalogue, e.g. "
            f"{sorted(missing)[:3]}; pass the catalogue the lists were built from."
        )
    return sizes.pop() if sizes else 0


def list_scores(
    ranker: CrossEncoderRanker,
    lists: Sequence[TrainingList],
    products: Mapping[str, Product],
    *,
    batch_lists: int = 16,
    tokens: _Tokens | None = None,
) -> FloatArray:
    """Raw scores, ``(len(lists), list size)``, in eval mode."""
    size = _check_lists(lists, products)
    tokens = tokens or _Tokens(ranker, lists, products)
    out = np.zeros((len(lists), size), dtype=np.float64)
    for lo in range(0, len(lists), batch_lists):
        chunk = lists[lo : lo + batch_lists]
        scores = ranker.score_batch(ranker.pairs(tokens.pairs(chunk)))
        out[lo : lo + len(chunk)] = scores.reshape(len(chunk), size)
    return out


def _positives(lists: Sequence[TrainingList]) -> IntArray:
    return np.asarray([lst.positive for lst in lists], dtype=np.int64)


# -- training -----------------------------------------------------------------------


def train_ranker(
    ranker: CrossEncoderRanker,
    train_lists: Sequence[TrainingList],
    val_lists: Sequence[TrainingList],
    products: Mapping[str, Product],
    config: RankerTrainConfig,
) -> RankerTrainingReport:
    """Fine-tune ``ranker`` in place, keep the best epoch, fit its temperature.

    Raises:
        CatalogError: when either list set is empty or the lists disagree in size.
    """
    import torch

    if not train_lists or not val_lists:
        raise CatalogError(
            f"training needs train and validation lists, got {len(train_lists)} and "
            f"{len(val_lists)}; use more interactions (or an earlier --before cutoff)."
        )
    size = _check_lists([*train_lists, *val_lists], products)
    start = time.perf_counter()
    deadline = None if config.max_minutes is None else start + 60.0 * config.max_minutes
    tokens = _Tokens(ranker, [*train_lists, *val_lists], products)
    val_pos = _positives(val_lists)
    model = ranker.torch_model

    def validate() -> tuple[float, FloatArray]:
        s = list_scores(
            ranker, val_lists, products, batch_lists=config.batch_lists * 2, tokens=tokens
        )
        return ndcg_at_k(s, val_pos, config.ndcg_k), s

    ndcg_before, _ = validate()
    best_ndcg = ndcg_before
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_epoch = 0
    history: list[EpochRecord] = []
    stop_reason = "epochs"
    stale = 0
    rng = np.random.default_rng(config.seed)
    logger.info(
        "training ranker: %d train / %d val lists of %d, val NDCG@%d before %.4f",
        len(train_lists),
        len(val_lists),
        size,
        config.ndcg_k,
        ndcg_before,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        out_of_time = False
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = rng.permutation(len(train_lists))
            losses: list[float] = []
            for lo in range(0, len(order), config.batch_lists):
                chunk = [train_lists[int(i)] for i in order[lo : lo + config.batch_lists]]
                logits = ranker.forward(ranker.pairs(tokens.pairs(chunk))).view(len(chunk), size)
                target = torch.as_tensor([lst.positive for lst in chunk], device=ranker.device)
                loss = torch.nn.functional.cross_entropy(logits, target)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimiser.step()
                losses.append(float(loss.detach()))
                if deadline is not None and time.perf_counter() > deadline:
                    out_of_time = True
                    break
            model.eval()
            val_ndcg, _ = validate()
            record = EpochRecord(epoch, float(np.mean(losses)), val_ndcg, time.perf_counter() - t0)
            history.append(record)
            logger.info(
                "epoch %d: loss %.4f, val NDCG@%d %.4f (%.1fs)",
                epoch,
                record.train_loss,
                config.ndcg_k,
                val_ndcg,
                record.seconds,
            )
            if val_ndcg > best_ndcg:
                best_ndcg, best_epoch, stale = val_ndcg, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            if out_of_time:
                stop_reason = "time limit"
                break
            if stale >= config.patience:
                stop_reason = f"no better validation NDCG for {stale} epochs"
                break
    model.load_state_dict(best_state)
    model.eval()
    ndcg_after, scores = validate()
    nll_before = list_nll(scores, val_pos, 1.0)
    ece_before = expected_calibration_error(softmax(scores, 1.0), val_pos, config.ece_bins)
    temperature = fit_temperature(scores, val_pos)
    ranker.temperature = temperature
    report = RankerTrainingReport(
        n_train_lists=len(train_lists),
        n_val_lists=len(val_lists),
        list_size=size,
        ndcg_k=config.ndcg_k,
        ndcg_before=ndcg_before,
        ndcg_after=ndcg_after,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stop_reason=stop_reason,
        temperature=temperature,
        nll_before_temperature=nll_before,
        nll_after_temperature=list_nll(scores, val_pos, temperature),
        ece_before_temperature=ece_before,
        ece_after_temperature=expected_calibration_error(
            softmax(scores, temperature), val_pos, config.ece_bins
        ),
        ece_kind=f"top-1, {config.ece_bins} equal-width bins, validation lists",
        seconds=time.perf_counter() - start,
        history=tuple(history),
    )
    logger.info(
        "ranker: val NDCG@%d %.4f -> %.4f; T=%.3f; ECE %.4f -> %.4f",
        config.ndcg_k,
        ndcg_before,
        ndcg_after,
        temperature,
        report.ece_before_temperature,
        report.ece_after_temperature,
    )
    return report


def fit_ranker(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    store: ProductIndex,
    config: RankerConfig,
    train_config: RankerTrainConfig,
) -> tuple[CrossEncoderRanker, RankerTrainingReport]:
    """Build lists from ``events``, split by user, fine-tune a new ranker, calibrate it.

    Args:
        events: Interactions before the cutoff (the caller filters them).
        products: The catalogue, by product id.
        store: The retrieval index (hard negatives come from it).
        config: The ranker to build (base model, layers, token budgets).
        train_config: How to train it.

    Returns:
        The trained ranker (temperature set) and the training report.
    """
    lists = build_training_lists(
        events, products, store, train_config, max_context_items=config.max_context_items
    )
    train, val = split_by_user(lists, train_config.val_fraction, train_config.seed)
    ranker = CrossEncoderRanker.from_base(config, device=train_config.device)
    report = train_ranker(ranker, train, val, products, train_config)
    return ranker, report
