"""Fine-tuning the cross-encoder on training lists.

**Training.** Listwise softmax cross-entropy (the positive's negative log-probability under
the softmax over its list), AdamW with two learning rates (``learning_rate`` for the
pretrained encoder, ``head_learning_rate`` for the new head and the pooler), linear warmup
then linear decay, gradient clipping at 1, and early stopping on the validation NDCG@k;
the best epoch's weights are kept.

*Why the first pass did not learn.* Its loss sat at ln(list size) for a whole run and the
temperature fit ran to the edge of its range. MiniLM (``all-MiniLM-L6-v2``) was trained
with mean pooling, so its [CLS] state, the only thing a sequence-classification head reads,
is an attention sink that hardly depends on the pair: across the 20 candidates of one list
its per-dimension standard deviation was .0007 against a norm of 8, and the logits differed
by 5e-5. A head on it has no signal to fit and the encoder almost no gradient to follow:
overfitting a fixed batch of 8 lists for 30 steps left the loss at 2.296 (chance 2.303)
with the pretrained [CLS] and 1.79 with ``open_cls`` (a mean-pooled head: 1.37). A higher
learning rate alone did not help. ``open_cls`` zeroes the last layer's query projection
before training: every token then attends uniformly, so [CLS] starts as a mean over the
whole pair (what MiniLM's representations were trained for), and the query weights learn
back from zero. It is a change of initial weights only: the architecture, the artifact
format, ONNX export and distillation are untouched.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from newarrivals.indexer.arrays import F64Array, I64Array
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.errors import CatalogError
from newarrivals.indexer.evaluation.metrics import one_relevant_ndcg_at_k
from newarrivals.indexer.towers.training_loop import EpochOutcome, TimeBudget, run_epochs
from newarrivals.ranker.base import PairRanker, softmax
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.context import candidate_text, context_text, encode_texts
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker
from newarrivals.ranker.training.lists import RerankList, TrainingList
from newarrivals.ranker.training.metrics import (
    expected_calibration_error,
    fit_temperature,
    list_nll,
)

__all__ = [
    "EpochRecord",
    "RankerTrainingReport",
    "list_scores",
    "open_cls",
    "optimiser_step",
    "train_ranker",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: its mean training loss and the validation NDCG@k after it."""

    epoch: int
    train_loss: float
    val_ndcg: float
    seconds: float


@dataclass(frozen=True)
class RankerTrainingReport:
    """What a training run did and how the ranker scores on validation and holdout lists.

    ``ndcg_retrieval`` is the validation NDCG@k of the lists ordered by their retrieval
    score (``nan`` when the lists carry none); the ``holdout_*`` fields are measured on the
    holdout lists (``nan`` and 0 lists when there were none) and calibration is reported
    there, T having been fitted on the validation lists.
    """

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
    steps: int = 0
    ndcg_retrieval: float = math.nan
    n_holdout_lists: int = 0
    holdout_ndcg_before: float = math.nan
    holdout_ndcg_after: float = math.nan
    holdout_ndcg_retrieval: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [asdict(h) for h in self.history]
        return data


class ListTokens:
    """Token ids of every product and context the lists need, tokenised once."""

    def __init__(
        self,
        ranker: PairRanker,
        lists: Sequence[TrainingList | RerankList],
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

    def pairs(
        self, lists: Sequence[TrainingList | RerankList]
    ) -> list[tuple[list[int], list[int]]]:
        return [
            (self.context[lst.context_ids], self.product[pid])
            for lst in lists
            for pid in lst.candidate_ids
        ]


def check_lists(lists: Sequence[TrainingList], products: Mapping[str, Product]) -> int:
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
    tokens: ListTokens | None = None,
) -> F64Array:
    """Raw scores, ``(len(lists), list size)``, in eval mode."""
    size = check_lists(lists, products)
    tokens = tokens or ListTokens(ranker, lists, products)
    out = np.zeros((len(lists), size), dtype=np.float64)
    for lo in range(0, len(lists), batch_lists):
        chunk = lists[lo : lo + batch_lists]
        scores = ranker.score_batch(ranker.pairs(tokens.pairs(chunk)))
        out[lo : lo + len(chunk)] = scores.reshape(len(chunk), size)
    return out


def rerank_scores(
    ranker: PairRanker,
    lists: Sequence[RerankList],
    products: Mapping[str, Product],
    *,
    batch_pairs: int = 256,
) -> list[F64Array]:
    """The ranker's raw scores of each re-rank list's candidates."""
    if not lists:
        return []
    tokens = ListTokens(ranker, lists, products)
    pairs = tokens.pairs(lists)
    flat = np.concatenate(
        [
            ranker.score_batch(ranker.pairs(pairs[lo : lo + batch_pairs]))
            for lo in range(0, len(pairs), batch_pairs)
        ]
    )
    out: list[F64Array] = []
    at = 0
    for lst in lists:
        out.append(flat[at : at + len(lst.candidate_ids)])
        at += len(lst.candidate_ids)
    return out


def list_positives(lists: Sequence[TrainingList]) -> I64Array:
    return np.asarray([lst.positive for lst in lists], dtype=np.int64)


def retrieval_matrix(lists: Sequence[TrainingList]) -> F64Array | None:
    if not lists or any("retrieval" not in lst.features for lst in lists):
        return None
    return np.asarray([lst.features["retrieval"] for lst in lists], dtype=np.float64)


def open_cls(model: Any) -> bool:
    """Zero the last encoder layer's query projection, so every token (and so [CLS])
    attends uniformly over the pair; see the module docstring. Returns whether the model
    had a BERT-style layer to open (others are left alone)."""
    import torch

    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not layers:
        return False
    attention = getattr(getattr(layers[-1], "attention", None), "self", None)
    query = getattr(attention, "query", None)
    if not isinstance(query, torch.nn.Linear):
        return False
    with torch.no_grad():
        query.weight.zero_()
        if query.bias is not None:
            query.bias.zero_()
    return True


def optimiser_step(model: Any, optimiser: Any, loss: Any) -> float:
    """Backward, clip the gradient norm to 1, step; returns the loss."""
    import torch

    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    return float(loss.detach())


def _warmup_steps(config: RankerTrainConfig, total_steps: int) -> int:
    return max(1, round(config.warmup_fraction * total_steps))


def _optimiser(model: Any, config: RankerTrainConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW with the head's own learning rate, and the warmup-then-linear-decay schedule."""
    import torch

    head = ("classifier", "pooler")
    encoder_params = [
        p for n, p in model.named_parameters() if not any(h in n.split(".") for h in head)
    ]
    head_params = [p for n, p in model.named_parameters() if any(h in n.split(".") for h in head)]
    optimiser = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": config.learning_rate},
            {"params": head_params, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    warmup = _warmup_steps(config, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    return optimiser, schedule


def train_ranker(
    ranker: CrossEncoderRanker,
    train_lists: Sequence[TrainingList],
    val_lists: Sequence[TrainingList],
    products: Mapping[str, Product],
    config: RankerTrainConfig,
    *,
    holdout_lists: Sequence[TrainingList] = (),
) -> RankerTrainingReport:
    """Fine-tune ``ranker`` in place, keep the best epoch, fit its temperature.

    Args:
        ranker: The ranker to train (usually fresh from :meth:`CrossEncoderRanker.from_base`).
        train_lists: Lists to learn from.
        val_lists: Lists of other users: early stopping and the temperature fit.
        products: The catalogue.
        config: How to train.
        holdout_lists: Lists of yet other users, used for nothing but the report (NDCG
            before/after, calibration error before/after the temperature).

    Raises:
        CatalogError: when either list set is empty or the lists disagree in size.
    """
    import torch

    if not train_lists or not val_lists:
        raise CatalogError(
            f"training needs train and validation lists, got {len(train_lists)} and "
            f"{len(val_lists)}; use more interactions (or an earlier --before cutoff)."
        )
    size = check_lists([*train_lists, *val_lists, *holdout_lists], products)
    start = time.perf_counter()
    tokens = ListTokens(ranker, [*train_lists, *val_lists, *holdout_lists], products)
    val_pos = list_positives(val_lists)
    hold_pos = list_positives(holdout_lists)
    model = ranker.torch_model
    k = config.ndcg_k

    def scores_of(lists: Sequence[TrainingList]) -> F64Array:
        if not lists:
            return np.zeros((0, size))
        return list_scores(
            ranker, lists, products, batch_lists=config.batch_lists * 2, tokens=tokens
        )

    def ndcg_or_nan(scores: F64Array | None, positives: I64Array) -> float:
        return (
            math.nan
            if scores is None or not len(positives)
            else one_relevant_ndcg_at_k(scores, positives, k)
        )

    ndcg_before = one_relevant_ndcg_at_k(scores_of(val_lists), val_pos, k)
    holdout_before = ndcg_or_nan(scores_of(holdout_lists), hold_pos)
    steps = 0
    rng = np.random.default_rng(config.seed)
    per_epoch = math.ceil(len(train_lists) / config.batch_lists)
    logger.info(
        "training ranker: %d train / %d val / %d holdout lists of %d, val NDCG@%d before %.4f",
        len(train_lists),
        len(val_lists),
        len(holdout_lists),
        size,
        k,
        ndcg_before,
    )
    # The time limit counts from the first step: scoring the validation and holdout lists
    # before training (minutes for large lists on a CPU) must not eat the training budget.
    budget = TimeBudget(config.max_minutes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        total = per_epoch * config.epochs
        warmup = _warmup_steps(config, total)
        optimiser, schedule = _optimiser(model, config, total)

        def epoch_run(epoch: int, budget: TimeBudget) -> EpochOutcome[EpochRecord]:
            nonlocal steps
            t0 = time.perf_counter()
            # Opened inside the first epoch, after run_epochs has snapshotted the model as
            # it came: when no epoch beats it, that model (not the opened one) is kept.
            if epoch == 1 and config.open_cls and not open_cls(model):
                logger.warning("open_cls: the model has no BERT-style last layer; left as it is")
            model.train()
            order = rng.permutation(len(train_lists))
            losses: list[float] = []
            for lo in range(0, len(order), config.batch_lists):
                chunk = [train_lists[int(i)] for i in order[lo : lo + config.batch_lists]]
                logits = ranker.forward(ranker.pairs(tokens.pairs(chunk))).view(len(chunk), size)
                target = torch.as_tensor([lst.positive for lst in chunk], device=ranker.device)
                loss = torch.nn.functional.cross_entropy(logits, target)
                losses.append(optimiser_step(model, optimiser, loss))
                schedule.step()
                steps += 1
                if budget.expired():
                    break
            model.eval()
            val_ndcg = one_relevant_ndcg_at_k(scores_of(val_lists), val_pos, k)
            record = EpochRecord(epoch, float(np.mean(losses)), val_ndcg, time.perf_counter() - t0)
            logger.info(
                "epoch %d: loss %.4f (chance %.4f), val NDCG@%d %.4f (%.1fs)",
                epoch,
                record.train_loss,
                math.log(size),
                k,
                val_ndcg,
                record.seconds,
            )
            # Epochs still inside the warmup do not count against patience: on small lists
            # the warmup spans epochs, and their flat scores are not a plateau.
            return EpochOutcome(record, val_ndcg, counts_for_patience=steps >= warmup)

        run = run_epochs(
            model,
            epoch_run,
            max_epochs=config.epochs,
            budget=budget,
            patience=config.patience,
            initial_score=ndcg_before,
            score_name="validation NDCG",
        )
    val_scores = scores_of(val_lists)
    ndcg_after = one_relevant_ndcg_at_k(val_scores, val_pos, k)
    temperature = fit_temperature(val_scores, val_pos)
    ranker.temperature = temperature
    hold_scores = scores_of(holdout_lists) if holdout_lists else None
    calib_scores, calib_pos = (
        (hold_scores, hold_pos) if hold_scores is not None else (val_scores, val_pos)
    )
    where = (
        "holdout lists (T fitted on the validation lists)"
        if holdout_lists
        else ("validation lists (the ones T was fitted on)")
    )
    val_retrieval = retrieval_matrix(val_lists)
    hold_retrieval = retrieval_matrix(holdout_lists)
    report = RankerTrainingReport(
        n_train_lists=len(train_lists),
        n_val_lists=len(val_lists),
        list_size=size,
        ndcg_k=k,
        ndcg_before=ndcg_before,
        ndcg_after=ndcg_after,
        best_epoch=run.best_epoch,
        epochs_run=run.epochs_run,
        stop_reason=run.stop_reason,
        temperature=temperature,
        nll_before_temperature=list_nll(calib_scores, calib_pos, 1.0),
        nll_after_temperature=list_nll(calib_scores, calib_pos, temperature),
        ece_before_temperature=expected_calibration_error(
            softmax(calib_scores, 1.0), calib_pos, config.ece_bins
        ),
        ece_after_temperature=expected_calibration_error(
            softmax(calib_scores, temperature), calib_pos, config.ece_bins
        ),
        ece_kind=f"top-1, {config.ece_bins} equal-width bins, {where}",
        seconds=time.perf_counter() - start,
        history=run.records,
        steps=steps,
        ndcg_retrieval=ndcg_or_nan(val_retrieval, val_pos),
        n_holdout_lists=len(holdout_lists),
        holdout_ndcg_before=holdout_before,
        holdout_ndcg_after=ndcg_or_nan(hold_scores, hold_pos),
        holdout_ndcg_retrieval=ndcg_or_nan(hold_retrieval, hold_pos),
    )
    logger.info(
        "ranker: val NDCG@%d %.4f -> %.4f (retrieval order %.4f); holdout %.4f -> %.4f "
        "(retrieval %.4f); T=%.3f; ECE %.4f -> %.4f",
        k,
        ndcg_before,
        ndcg_after,
        report.ndcg_retrieval,
        report.holdout_ndcg_before,
        report.holdout_ndcg_after,
        report.holdout_ndcg_retrieval,
        temperature,
        report.ece_before_temperature,
        report.ece_after_temperature,
    )
    return report
