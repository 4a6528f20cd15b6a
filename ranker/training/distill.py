"""Distilling the cross-encoder into a small, fast student that serves within the budget.

**Lists.** The teacher's own: :func:`replay_lists` or :func:`cold_start_lists` rebuild
them with the teacher's recorded recipe (``train-ranker`` writes it into the manifest)
through the trainer's public builders and split the users the same way, so the users the
teacher was validated (and, cold-start, reported) on stay unseen.

**Training.** The teacher scores every training and validation list once
(:func:`~newarrivals.ranker.trainer.list_scores`). Per list the student's loss is

    kl_weight * tau^2 * KL(softmax(z_t / (T_t tau)) || softmax(z_s / tau))
    + mse_weight * mean((centre(z_s) - centre(z_t / T_t))^2)
    + label_weight * CE(softmax(z_s), positive)

with ``T_t`` the teacher's fitted temperature (the target is the teacher's *calibrated*
distribution), ``tau`` the distillation temperature and ``centre`` the per-list mean
removed (softmax ignores a shift). AdamW, gradient clipping at 1, early stopping on the
validation NDCG@k; the best epoch's weights are kept and the student's own temperature is
fitted on the validation lists (as in :mod:`newarrivals.ranker.trainer`).

**Agreement.** Besides NDCG, the report gives how closely the student follows the
teacher on the validation lists: the mean per-list Spearman correlation of their scores,
the share of lists where both put the same candidate first, and the mean KL divergence.

"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.evaluation.metrics import one_relevant_ndcg_at_k
from newarrivals.indexer.towers.training_loop import EpochOutcome, TimeBudget, run_epochs
from newarrivals.indexer.validation import (
    require_int,
    require_known_fields,
    require_positive,
)
from newarrivals.ranker.base import softmax
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker, TorchPairRanker
from newarrivals.ranker.training.lists import TrainingList
from newarrivals.ranker.training.metrics import (
    expected_calibration_error,
    fit_temperature,
    list_nll,
)
from newarrivals.ranker.training.student_init import StudentConfig, build_student
from newarrivals.ranker.training.trainer import list_scores, optimiser_step

__all__ = [
    "DistillConfig",
    "DistillEpoch",
    "DistillReport",
    "distill_ranker",
    "fit_student",
    "rank_agreement",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """How the student learns from the teacher (see the module docstring for the loss).

    Args:
        epochs: Passes over the training lists.
        max_minutes: Wall-clock limit of the student's training; ``None`` for none.
        batch_lists: Lists per optimiser step.
        learning_rate: AdamW learning rate (a small, partly random student wants a larger
            one than fine-tuning MiniLM).
        weight_decay: AdamW weight decay.
        kl_weight: Weight of the listwise KL to the teacher's distribution.
        mse_weight: Weight of the MSE between centred logits.
        label_weight: Weight of the cross-entropy on the true positive.
        distill_temperature: ``tau``, softening both distributions in the KL term.
        patience: Stop after this many epochs without a better validation NDCG.
        ndcg_k: Cut-off of the validation NDCG.
        ece_bins: Bins of the top-1 expected calibration error.
        teacher_batch_lists: Lists per teacher forward pass when scoring the lists.
        seed: Seed of shuffling and dropout.
        device: A resolved torch device for the student and the teacher.
    """

    epochs: int = 30
    max_minutes: float | None = None
    batch_lists: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    kl_weight: float = 1.0
    mse_weight: float = 0.1
    label_weight: float = 0.2
    distill_temperature: float = 1.0
    patience: int = 5
    ndcg_k: int = 10
    ece_bins: int = 10
    teacher_batch_lists: int = 8
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        require_int("epochs", self.epochs)
        if self.max_minutes is not None:
            require_positive("max_minutes", self.max_minutes)
        require_int("batch_lists", self.batch_lists)
        require_positive("learning_rate", self.learning_rate)
        for name in ("weight_decay", "kl_weight", "mse_weight", "label_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}.")
        if self.kl_weight + self.mse_weight + self.label_weight <= 0:
            raise ConfigError(
                "kl_weight + mse_weight + label_weight must be > 0, got all zero; "
                "set kl_weight=1 to learn from the teacher."
            )
        require_positive("distill_temperature", self.distill_temperature)
        require_int("patience", self.patience)
        require_int("ndcg_k", self.ndcg_k)
        require_int("ece_bins", self.ece_bins)
        require_int("teacher_batch_lists", self.teacher_batch_lists)
        require_int("seed", self.seed, minimum=0)
        if not isinstance(self.device, str) or not self.device.strip():
            raise ConfigError(
                f"device must be a resolved torch device string, got {self.device!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillConfig:
        require_known_fields(cls, data)
        return cls(**dict(data))


@dataclass(frozen=True)
class DistillEpoch:
    """One epoch: mean training loss and the student on the validation lists after it."""

    epoch: int
    train_loss: float
    val_ndcg: float
    val_agreement: float
    val_kl: float
    seconds: float


@dataclass(frozen=True)
class DistillReport:
    """What distillation did, and the student next to the teacher on the validation lists.

    ``agreement_*`` is the mean per-list Spearman correlation of student and teacher
    scores; ``top1_agreement_*`` the share of lists where both rank the same candidate
    first; ``kl_*`` the mean KL(teacher || student) of the calibrated distributions.
    """

    n_train_lists: int
    n_val_lists: int
    list_size: int
    ndcg_k: int
    teacher_ndcg: float
    ndcg_before: float
    ndcg_after: float
    agreement_before: float
    agreement_after: float
    top1_agreement_before: float
    top1_agreement_after: float
    kl_before: float
    kl_after: float
    best_epoch: int
    epochs_run: int
    stop_reason: str
    temperature: float
    nll_after_temperature: float
    ece_before_temperature: float
    ece_after_temperature: float
    teacher_scoring_seconds: float
    seconds: float
    history: tuple[DistillEpoch, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [asdict(h) for h in self.history]
        return data


def rank_agreement(student: F64Array, teacher: F64Array) -> tuple[float, float]:
    """Mean per-list Spearman correlation, and the share of lists with the same top item.

    Args:
        student: ``(lists, size)`` scores.
        teacher: ``(lists, size)`` scores.

    Example:
        >>> rank_agreement(np.array([[1.0, 2.0, 3.0]]), np.array([[0.1, 0.2, 0.9]]))
        (1.0, 1.0)
    """
    if student.shape != teacher.shape:
        raise ConfigError(
            f"student scores {student.shape} and teacher scores {teacher.shape} differ in shape."
        )
    if student.shape[0] == 0:
        return 0.0, 0.0

    def ranks(a: F64Array) -> F64Array:
        out: F64Array = np.argsort(np.argsort(a, axis=1, kind="stable"), axis=1).astype(np.float64)
        centred: F64Array = out - out.mean(axis=1, keepdims=True)
        return centred

    rs, rt = ranks(student), ranks(teacher)
    denom = np.sqrt((rs**2).sum(axis=1) * (rt**2).sum(axis=1))
    rho = np.where(denom > 0, (rs * rt).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)
    top1 = student.argmax(axis=1) == teacher.argmax(axis=1)
    return float(rho.mean()), float(top1.mean())


def _mean_kl(teacher_logits: F64Array, student_logits: F64Array) -> float:
    """Mean KL(softmax(teacher) || softmax(student)) over lists."""
    p = softmax(teacher_logits)
    log_p = np.log(np.clip(p, 1e-300, None))
    z = student_logits - student_logits.max(axis=1, keepdims=True)
    log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(np.mean((p * (log_p - log_q)).sum(axis=1)))


class _StudentTokens:
    """The student's token ids for every context and candidate of the lists, made once."""

    def __init__(
        self,
        student: TorchPairRanker,
        lists: Sequence[TrainingList],
        products: Mapping[str, Product],
    ) -> None:
        ids = sorted({pid for lst in lists for pid in lst.candidate_ids})
        encoded = student.candidate_token_ids([products[p] for p in ids])
        self.product = dict(zip(ids, encoded, strict=True))
        self.context = {
            c: student.encode_context([products[p] for p in c]).token_ids
            for c in sorted({lst.context_ids for lst in lists})
        }

    def pairs(self, lists: Sequence[TrainingList]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        return [
            (self.context[lst.context_ids], self.product[pid])
            for lst in lists
            for pid in lst.candidate_ids
        ]


def _scores(
    student: TorchPairRanker,
    lists: Sequence[TrainingList],
    tokens: _StudentTokens,
    size: int,
    batch_lists: int,
) -> F64Array:
    out = np.zeros((len(lists), size), dtype=np.float64)
    for lo in range(0, len(lists), batch_lists):
        chunk = lists[lo : lo + batch_lists]
        out[lo : lo + len(chunk)] = student.score_batch(student.pairs(tokens.pairs(chunk))).reshape(
            len(chunk), size
        )
    return out


def _list_size(lists: Sequence[TrainingList], products: Mapping[str, Product]) -> int:
    sizes = {len(lst.candidate_ids) for lst in lists}
    if len(sizes) != 1:
        raise CatalogError(f"lists must all have one size, got sizes {sorted(sizes)}.")
    missing = {p for lst in lists for p in (*lst.candidate_ids, *lst.context_ids)} - set(products)
    if missing:
        raise CatalogError(
            f"{len(missing)} products in the lists are not in the catalogue, e.g. "
            f"{sorted(missing)[:3]}; pass the catalogue the lists were built from."
        )
    return sizes.pop()


def distill_ranker(
    teacher: CrossEncoderRanker,
    student: TorchPairRanker,
    train_lists: Sequence[TrainingList],
    val_lists: Sequence[TrainingList],
    products: Mapping[str, Product],
    config: DistillConfig,
    *,
    teacher_scores: tuple[F64Array, F64Array] | None = None,
) -> DistillReport:
    """Train ``student`` in place on the teacher's scores; keep the best epoch; calibrate.

    Args:
        teacher: The trained ranker (its temperature calibrates the targets).
        student: The ranker to train (:func:`build_student`).
        train_lists: Lists to learn from.
        val_lists: Held-out lists for early stopping, calibration and the report.
        products: The catalogue.
        config: How to train.
        teacher_scores: The teacher's raw scores of ``(train_lists, val_lists)`` when
            already computed; scored here otherwise.

    Raises:
        CatalogError: for empty list sets, lists of mixed sizes or unknown products.
    """
    import torch

    if not train_lists or not val_lists:
        raise CatalogError(
            f"distillation needs train and validation lists, got {len(train_lists)} and "
            f"{len(val_lists)}; use more interactions."
        )
    size = _list_size([*train_lists, *val_lists], products)
    start = time.perf_counter()
    if teacher_scores is None:
        t_train = list_scores(
            teacher, train_lists, products, batch_lists=config.teacher_batch_lists
        )
        t_val = list_scores(teacher, val_lists, products, batch_lists=config.teacher_batch_lists)
    else:
        t_train, t_val = teacher_scores
    if t_train.shape != (len(train_lists), size) or t_val.shape != (len(val_lists), size):
        raise CatalogError(
            f"teacher scores {t_train.shape}/{t_val.shape} do not match the lists "
            f"({len(train_lists)}/{len(val_lists)} x {size})."
        )
    teacher_seconds = time.perf_counter() - start
    # Targets are the teacher's calibrated logits.
    t_train_cal = t_train / teacher.temperature
    t_val_cal = t_val / teacher.temperature
    val_pos = np.asarray([lst.positive for lst in val_lists], dtype=np.int64)
    teacher_ndcg = one_relevant_ndcg_at_k(t_val, val_pos, config.ndcg_k)
    logger.info(
        "teacher scored %d lists of %d in %.1fs; teacher val NDCG@%d %.4f",
        len(train_lists) + len(val_lists),
        size,
        teacher_seconds,
        config.ndcg_k,
        teacher_ndcg,
    )

    tokens = _StudentTokens(student, [*train_lists, *val_lists], products)
    model = student.torch_model
    device = student.device

    def validate() -> tuple[float, float, float, float, F64Array]:
        s = _scores(student, val_lists, tokens, size, config.batch_lists * 2)
        rho, top1 = rank_agreement(s, t_val)
        return (
            one_relevant_ndcg_at_k(s, val_pos, config.ndcg_k),
            rho,
            top1,
            _mean_kl(t_val_cal, s),
            s,
        )

    ndcg_before, rho_before, top1_before, kl_before, _ = validate()
    rng = np.random.default_rng(config.seed)
    tau = config.distill_temperature
    budget = TimeBudget(config.max_minutes)
    logger.info(
        "distilling: %d train / %d val lists of %d; student val NDCG@%d %.4f, agreement "
        "%.3f before",
        len(train_lists),
        len(val_lists),
        size,
        config.ndcg_k,
        ndcg_before,
        rho_before,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )

        def epoch_run(epoch: int, budget: TimeBudget) -> EpochOutcome[DistillEpoch]:
            t0 = time.perf_counter()
            model.train()
            order = rng.permutation(len(train_lists))
            losses: list[float] = []
            for lo in range(0, len(order), config.batch_lists):
                idx = order[lo : lo + config.batch_lists]
                chunk = [train_lists[int(i)] for i in idx]
                z_s = student.forward(student.pairs(tokens.pairs(chunk))).view(len(chunk), size)
                z_t = torch.as_tensor(t_train_cal[idx], dtype=z_s.dtype, device=device)
                loss = z_s.new_zeros(())
                if config.kl_weight:
                    log_q = torch.log_softmax(z_s / tau, dim=1)
                    log_p = torch.log_softmax(z_t / tau, dim=1)
                    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
                    loss = loss + config.kl_weight * tau * tau * kl
                if config.mse_weight:
                    diff = (z_s - z_s.mean(dim=1, keepdim=True)) - (
                        z_t - z_t.mean(dim=1, keepdim=True)
                    )
                    loss = loss + config.mse_weight * diff.pow(2).mean()
                if config.label_weight:
                    target = torch.as_tensor([lst.positive for lst in chunk], device=device)
                    ce = torch.nn.functional.cross_entropy(z_s, target)
                    loss = loss + config.label_weight * ce
                losses.append(optimiser_step(model, optimiser, loss))
                if budget.expired():
                    break
            model.eval()
            ndcg, rho, _, kl_val, _ = validate()
            record = DistillEpoch(
                epoch, float(np.mean(losses)), ndcg, rho, kl_val, time.perf_counter() - t0
            )
            logger.info(
                "epoch %d: loss %.4f, val NDCG@%d %.4f, agreement %.3f, KL %.4f (%.1fs)",
                epoch,
                record.train_loss,
                config.ndcg_k,
                ndcg,
                rho,
                kl_val,
                record.seconds,
            )
            return EpochOutcome(record, ndcg)

        run = run_epochs(
            model,
            epoch_run,
            max_epochs=config.epochs,
            budget=budget,
            patience=config.patience,
            initial_score=ndcg_before,
            score_name="validation NDCG",
        )
    ndcg_after, rho_after, top1_after, kl_after, scores = validate()
    ece_before = expected_calibration_error(softmax(scores), val_pos, config.ece_bins)
    temperature = fit_temperature(scores, val_pos)
    student.temperature = temperature
    report = DistillReport(
        n_train_lists=len(train_lists),
        n_val_lists=len(val_lists),
        list_size=size,
        ndcg_k=config.ndcg_k,
        teacher_ndcg=teacher_ndcg,
        ndcg_before=ndcg_before,
        ndcg_after=ndcg_after,
        agreement_before=rho_before,
        agreement_after=rho_after,
        top1_agreement_before=top1_before,
        top1_agreement_after=top1_after,
        kl_before=kl_before,
        kl_after=kl_after,
        best_epoch=run.best_epoch,
        epochs_run=run.epochs_run,
        stop_reason=run.stop_reason,
        temperature=temperature,
        nll_after_temperature=list_nll(scores, val_pos, temperature),
        ece_before_temperature=ece_before,
        ece_after_temperature=expected_calibration_error(
            softmax(scores, temperature), val_pos, config.ece_bins
        ),
        teacher_scoring_seconds=teacher_seconds,
        seconds=time.perf_counter() - start,
        history=run.records,
    )
    logger.info(
        "student: val NDCG@%d %.4f -> %.4f (teacher %.4f); agreement %.3f -> %.3f; T=%.3f; "
        "ECE %.4f",
        config.ndcg_k,
        ndcg_before,
        ndcg_after,
        teacher_ndcg,
        rho_before,
        rho_after,
        temperature,
        report.ece_after_temperature,
    )
    return report


def fit_student(
    teacher: CrossEncoderRanker,
    train_lists: Sequence[TrainingList],
    val_lists: Sequence[TrainingList],
    products: Mapping[str, Product],
    student_config: StudentConfig,
    distill_config: DistillConfig,
) -> tuple[TorchPairRanker, DistillReport]:
    """Build a student (:func:`build_student`) and distil ``teacher`` into it.

    Args:
        teacher: The trained ranker.
        train_lists: Lists to learn from (:func:`replay_lists` or :func:`cold_start_lists`
            with the teacher's recorded recipe).
        val_lists: The teacher's validation lists.
        products: The catalogue, by product id.
        student_config: The student's shape and budgets.
        distill_config: How to train it.

    Returns:
        The trained student (temperature set) and the report.
    """
    student = build_student(teacher, student_config)
    report = distill_ranker(teacher, student, train_lists, val_lists, products, distill_config)
    return student, report
