"""Distilling the cross-encoder into a small, fast student that serves within the budget.

**Student.** A BERT-style cross-encoder with fewer layers and a narrower hidden size (2
layers x 128 by default, intermediate 4x, 2 heads) that reads the same pairs
(``[CLS] context [SEP] candidate [SEP]``) with the teacher's tokenizer and vocabulary,
under its own, tighter token budgets: a ``transformers`` BERT (``architecture="bert"``) or
the shared-context encoder of :mod:`newarrivals.ranker.shared`, which encodes the context
once per request (``architecture="shared-context"``). Its embeddings start as the
teacher's projected onto their top principal components (``init="pca"``: word embeddings
centred, position and segment embeddings through the same projection, so the input layer
starts with the teacher's lexical geometry); the transformer layers and head start
random. ``init="random"`` starts everything random.

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
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.catalog.schema import Interaction, Product
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.evaluation import ProductVectors
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.validation import (
    require_fraction,
    require_int,
    require_known_fields,
    require_positive,
)
from newarrivals.ranker.base import softmax
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.model import CrossEncoderRanker, TorchPairRanker
from newarrivals.ranker.shared import SharedContextConfig, SharedContextRanker
from newarrivals.ranker.trainer import (
    ColdStartListConfig,
    EarlyStopping,
    TrainingList,
    build_cold_start_lists,
    build_training_lists,
    expected_calibration_error,
    fit_temperature,
    list_nll,
    list_scores,
    ndcg_at_k,
    optimiser_step,
    split_by_user,
)

__all__ = [
    "STUDENT_ARCHITECTURES",
    "STUDENT_INITS",
    "DistillConfig",
    "DistillEpoch",
    "DistillReport",
    "StudentConfig",
    "build_student",
    "cold_start_lists",
    "distill_ranker",
    "fit_student",
    "rank_agreement",
    "replay_lists",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: How a student's weights start (see the module docstring).
STUDENT_INITS: Final = ("pca", "random")
#: Student architectures: a plain BERT cross-encoder, or one that encodes the context once
#: per request (:mod:`newarrivals.ranker.shared`).
STUDENT_ARCHITECTURES: Final = ("bert", "shared-context")


@dataclass(frozen=True)
class StudentConfig:
    """The student's shape and what it reads.

    Args:
        hidden_size: Width of the encoder (the teacher's MiniLM is 384).
        num_layers: Encoder layers.
        num_heads: Attention heads (``hidden_size`` must divide by it).
        intermediate_size: Feed-forward width; ``None`` means ``4 * hidden_size``.
        context_tokens: Token budget of the user context.
        candidate_tokens: Token budget of a candidate's text.
        init: ``pca`` (teacher embeddings projected, needs ``hidden_size`` <= the
            teacher's) or ``random``.
        architecture: ``bert`` (a ``transformers`` BERT cross-encoder) or
            ``shared-context`` (the context encoded once per request, see
            :mod:`newarrivals.ranker.shared`).
        dropout: Dropout in the encoder while training.
        seed: Seed of the random initialisation.

    Example:
        >>> StudentConfig(hidden_size=128).intermediate_size
        512
    """

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int | None = None
    context_tokens: int = 48
    candidate_tokens: int = 24
    init: str = "pca"
    architecture: str = "bert"
    dropout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("hidden_size", self.hidden_size, minimum=4)
        require_int("num_layers", self.num_layers)
        require_int("num_heads", self.num_heads)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                f"({self.num_heads}); e.g. 128 with 2 heads."
            )
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        require_int("intermediate_size", self.intermediate_size)
        require_int("context_tokens", self.context_tokens, minimum=8)
        require_int("candidate_tokens", self.candidate_tokens, minimum=8)
        if self.init not in STUDENT_INITS:
            raise ConfigError(f"init must be one of {list(STUDENT_INITS)}, got {self.init!r}.")
        if self.architecture not in STUDENT_ARCHITECTURES:
            raise ConfigError(
                f"architecture must be one of {list(STUDENT_ARCHITECTURES)}, got "
                f"{self.architecture!r}."
            )
        require_fraction("dropout", self.dropout, below_one=True)
        require_int("seed", self.seed, minimum=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentConfig:
        require_known_fields(cls, data)
        return cls(**dict(data))


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


# -- the student --------------------------------------------------------------------


def build_student(teacher: CrossEncoderRanker, config: StudentConfig) -> TorchPairRanker:
    """A new BERT-style student reading the teacher's vocabulary (see the module docstring).

    Raises:
        ConfigError: for ``init="pca"`` with a student wider than the teacher, or token
            budgets beyond the teacher's positions.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    t_cfg: Any = teacher.torch_model.config
    t_hidden = int(t_cfg.hidden_size)
    if config.init == "pca" and config.hidden_size > t_hidden:
        raise ConfigError(
            f"init='pca' projects the teacher's {t_hidden}-wide embeddings, so hidden_size "
            f"must be <= {t_hidden}, got {config.hidden_size}; use init='random' or a "
            "narrower student."
        )
    tokenizer = teacher.tokenizer
    settings: dict[str, Any] = {
        "vocab_size": int(t_cfg.vocab_size),
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": int(config.intermediate_size or 4 * config.hidden_size),
        "max_position_embeddings": int(t_cfg.max_position_embeddings),
        "type_vocab_size": int(getattr(t_cfg, "type_vocab_size", 2)),
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
        "pad_token_id": int(tokenizer.pad_token_id),
        "num_labels": 1,
    }
    ranker_config = replace(
        teacher.config,
        num_layers=config.num_layers,
        context_tokens=config.context_tokens,
        candidate_tokens=config.candidate_tokens,
        seed=config.seed,
    )
    student: TorchPairRanker
    if config.architecture == "shared-context":
        shape = SharedContextConfig(
            vocab_size=settings["vocab_size"],
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            intermediate_size=settings["intermediate_size"],
            max_position_embeddings=settings["max_position_embeddings"],
            type_vocab_size=settings["type_vocab_size"],
            dropout=config.dropout,
            pad_token_id=settings["pad_token_id"],
        )
        student = SharedContextRanker.create(
            shape, tokenizer, ranker_config, seed=config.seed, device=teacher.device
        )
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = BertForSequenceClassification(BertConfig(**settings))
        student = CrossEncoderRanker(model, tokenizer, ranker_config, device=teacher.device)
    if config.init == "pca":
        _project_embeddings(teacher.torch_model, student.torch_model, config.hidden_size)
    arch = student.architecture
    logger.info(
        "%s student: %d layers x %d hidden (%d intermediate, %d heads), %.1fM parameters, "
        "budgets %d/%d tokens, init %s",
        config.architecture,
        arch["num_layers"],
        arch["hidden_size"],
        arch["intermediate_size"],
        arch["num_attention_heads"],
        arch["parameters"] / 1e6,
        config.context_tokens,
        config.candidate_tokens,
        config.init,
    )
    return student


def _project_embeddings(teacher: Any, student: Any, width: int) -> None:
    """Student embeddings = the teacher's on their top ``width`` principal components."""
    import torch

    # A transformers model keeps them under its base model; the shared-context one at the top.
    t_emb = getattr(teacher, "base_model", teacher).embeddings
    s_emb = getattr(student, "base_model", student).embeddings
    with torch.no_grad():
        words = t_emb.word_embeddings.weight.detach().float().cpu()
        mean = words.mean(dim=0, keepdim=True)
        # Right singular vectors of the centred vocabulary = its principal directions.
        _, _, vh = torch.linalg.svd(words - mean, full_matrices=False)
        basis = vh[:width].T.contiguous()
        s_emb.word_embeddings.weight.copy_((words - mean) @ basis)
        for name in ("position_embeddings", "token_type_embeddings"):
            source = getattr(t_emb, name, None)
            target = getattr(s_emb, name, None)
            if source is not None and target is not None:
                rows = min(source.weight.shape[0], target.weight.shape[0])
                target.weight[:rows].copy_(source.weight[:rows].detach().float().cpu() @ basis)


# -- metrics --------------------------------------------------------------------------


def rank_agreement(student: FloatArray, teacher: FloatArray) -> tuple[float, float]:
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

    def ranks(a: FloatArray) -> FloatArray:
        out: FloatArray = np.argsort(np.argsort(a, axis=1, kind="stable"), axis=1).astype(
            np.float64
        )
        centred: FloatArray = out - out.mean(axis=1, keepdims=True)
        return centred

    rs, rt = ranks(student), ranks(teacher)
    denom = np.sqrt((rs**2).sum(axis=1) * (rt**2).sum(axis=1))
    rho = np.where(denom > 0, (rs * rt).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)
    top1 = student.argmax(axis=1) == teacher.argmax(axis=1)
    return float(rho.mean()), float(top1.mean())


def _mean_kl(teacher_logits: FloatArray, student_logits: FloatArray) -> float:
    """Mean KL(softmax(teacher) || softmax(student)) over lists."""
    p = softmax(teacher_logits)
    log_p = np.log(np.clip(p, 1e-300, None))
    z = student_logits - student_logits.max(axis=1, keepdims=True)
    log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(np.mean((p * (log_p - log_q)).sum(axis=1)))


# -- training -------------------------------------------------------------------------


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
) -> FloatArray:
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
    teacher_scores: tuple[FloatArray, FloatArray] | None = None,
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
    teacher_ndcg = ndcg_at_k(t_val, val_pos, config.ndcg_k)
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

    def validate() -> tuple[float, float, float, float, FloatArray]:
        s = _scores(student, val_lists, tokens, size, config.batch_lists * 2)
        rho, top1 = rank_agreement(s, t_val)
        return ndcg_at_k(s, val_pos, config.ndcg_k), rho, top1, _mean_kl(t_val_cal, s), s

    ndcg_before, rho_before, top1_before, kl_before, _ = validate()
    stopping = EarlyStopping(model, ndcg_before, config.patience)
    history: list[DistillEpoch] = []
    stop_reason = "epochs"
    rng = np.random.default_rng(config.seed)
    tau = config.distill_temperature
    deadline = None if config.max_minutes is None else time.perf_counter() + 60 * config.max_minutes
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
        out_of_time = False
        for epoch in range(1, config.epochs + 1):
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
                if deadline is not None and time.perf_counter() > deadline:
                    out_of_time = True
                    break
            model.eval()
            ndcg, rho, _, kl_val, _ = validate()
            record = DistillEpoch(
                epoch, float(np.mean(losses)), ndcg, rho, kl_val, time.perf_counter() - t0
            )
            history.append(record)
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
            stopping.update(model, epoch, ndcg)
            reason = stopping.stop_reason(out_of_time)
            if reason is not None:
                stop_reason = reason
                break
    stopping.restore(model)
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
        best_epoch=stopping.best_epoch,
        epochs_run=len(history),
        stop_reason=stop_reason,
        temperature=temperature,
        nll_after_temperature=list_nll(scores, val_pos, temperature),
        ece_before_temperature=ece_before,
        ece_after_temperature=expected_calibration_error(
            softmax(scores, temperature), val_pos, config.ece_bins
        ),
        teacher_scoring_seconds=teacher_seconds,
        seconds=time.perf_counter() - start,
        history=tuple(history),
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


def replay_lists(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    store: ProductIndex,
    train_config: RankerTrainConfig,
    *,
    max_context_items: int = 10,
) -> tuple[list[TrainingList], list[TrainingList]]:
    """Train and validation lists as ``train-ranker --lists replay`` builds and splits them.

    Pass the teacher's recorded ``train_config`` so its validation users stay held out.
    """
    lists = build_training_lists(
        events, products, store, train_config, max_context_items=max_context_items
    )
    return split_by_user(lists, train_config.val_fraction, train_config.seed)


def cold_start_lists(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    vectors: Mapping[str, ProductVectors],
    cutoff: str | datetime,
    train_config: RankerTrainConfig,
    lists_config: ColdStartListConfig,
    *,
    max_context_items: int = 10,
) -> tuple[list[TrainingList], list[TrainingList], list[TrainingList]]:
    """Train, validation and holdout lists as ``train-ranker`` (cold-start windows) builds them.

    The users are split as :func:`~newarrivals.ranker.trainer.fit_cold_start_ranker`
    splits them (train; the held-out users halved into validation and holdout); distil on
    train and validation only, so the holdout users stay unseen by teacher and student.
    """
    built = build_cold_start_lists(
        events,
        products,
        vectors,
        cutoff,
        train_config,
        lists_config,
        max_context_items=max_context_items,
    )
    train, held = split_by_user(built.lists, train_config.val_fraction, train_config.seed)
    val, holdout = split_by_user(held, 0.5, train_config.seed + 1)
    return train, val, holdout


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
