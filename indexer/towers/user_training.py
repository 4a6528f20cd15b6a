"""Training a user tower: next-event examples, sampled-softmax loss, validation recall
and the epoch loop (see :mod:`newarrivals.indexer.towers.user` for the model)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

from newarrivals.indexer.catalog.schema import EventType, Interaction
from newarrivals.indexer.device import resolve_device
from newarrivals.indexer.errors import NewArrivalsError
from newarrivals.indexer.towers.training_loop import EpochOutcome, TimeBudget, run_epochs
from newarrivals.indexer.towers.user import UserTower
from newarrivals.indexer.towers.user_config import EVENT_CODE, UserTowerConfig
from newarrivals.indexer.towers.user_data import (
    ArrayProductVectors,
    EventSequences,
    HistoryBatch,
    collate_histories,
)
from newarrivals.indexer.towers.user_network import UserTowerNet, baseline_mean

__all__ = ["train_user_tower"]

logger = logging.getLogger(__name__)

# Validation rows per scoring block.
_SCORE_BLOCK: Final = 512


@dataclass(frozen=True)
class _Examples:
    """Targets as (user's first position, target position, target product row)."""

    begin: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    target: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.end.size)

    def take(self, idx: npt.NDArray[np.int64]) -> _Examples:
        return _Examples(self.begin[idx], self.end[idx], self.target[idx])


def _examples(seq: EventSequences, users: Iterable[int], config: UserTowerConfig) -> _Examples:
    targets = np.asarray([EVENT_CODE[e] for e in config.target_events], dtype=np.int64)
    begin: list[int] = []
    end: list[int] = []
    target: list[int] = []
    for u in users:
        s, e = int(seq.starts[u]), int(seq.starts[u + 1])
        seen: set[int] = set()
        rows = seq.rows[s:e].tolist()
        is_target = np.isin(seq.codes[s:e], targets).tolist()
        for j, row in enumerate(rows):
            if j > 0 and is_target[j] and not (config.exclude_seen_targets and row in seen):
                begin.append(s)
                end.append(s + j)
                target.append(row)
            seen.add(row)
    return _Examples(
        np.asarray(begin, dtype=np.int64),
        np.asarray(end, dtype=np.int64),
        np.asarray(target, dtype=np.int64),
    )


def _batches(
    seq: EventSequences, ex: _Examples, batch_size: int, max_history: int, device: str
) -> Iterator[tuple[HistoryBatch, torch.Tensor]]:
    for lo in range(0, len(ex), batch_size):
        part = ex.take(np.arange(lo, min(len(ex), lo + batch_size), dtype=np.int64))
        at = seq.times[part.end]
        batch = collate_histories(seq, part.begin, part.end, at, max_history, device)
        yield batch, torch.as_tensor(part.target, device=device)


def _softmax_loss(
    users: torch.Tensor,
    products: torch.Tensor,
    target: torch.Tensor,
    temperature: torch.Tensor,
    negatives: torch.Tensor | None,
    log_count: torch.Tensor | None,
) -> torch.Tensor:
    """Sampled softmax: each user's target against the batch's other targets (+ negatives).

    ``log_count[j]`` is the log of product ``j``'s expected number of appearances among a
    step's sampled columns; subtracting it from every sampled logit (the sampled-softmax
    "logQ" correction) keeps popular products, which turn up as in-batch negatives far
    more often, from being pushed down merely for being popular.
    """
    logits = users @ products[target].T / temperature
    if log_count is not None:
        logits = logits - log_count[target].unsqueeze(0)
    # A product that is the target of two rows is not a negative for either of them.
    same = target.unsqueeze(1) == target.unsqueeze(0)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    if negatives is not None and negatives.numel():
        extra = users @ products[negatives].T / temperature
        if log_count is not None:
            extra = extra - log_count[negatives].unsqueeze(0)
        extra = extra.masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    labels = torch.arange(users.shape[0], device=users.device)
    return F.cross_entropy(logits, labels)


def _recall(
    user_vecs: torch.Tensor,
    products: torch.Tensor,
    batch: HistoryBatch,
    target: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Per-example hit@k of the target among all products, the user's history excluded."""
    scores = user_vecs @ products.T
    # scatter_add, not scatter: padded slots also point at row 0 and must not unset it.
    counts = torch.zeros_like(scores, dtype=torch.int64)
    history = counts.scatter_add_(1, batch.rows, (batch.codes > 0).long()) > 0
    history[torch.arange(scores.shape[0]), target] = False
    scores = scores.masked_fill(history, float("-inf"))
    own = scores.gather(1, target.unsqueeze(1))
    return ((scores > own).sum(1) < k).float()


@torch.inference_mode()
def _evaluate(
    net: UserTowerNet,
    products: torch.Tensor,
    seq: EventSequences,
    ex: _Examples,
    config: UserTowerConfig,
    device: str,
) -> tuple[float, float, float]:
    """(in-batch loss, tower recall@k, baseline recall@k) on the validation examples."""
    net.eval()
    losses: list[float] = []
    hits: list[torch.Tensor] = []
    base: list[torch.Tensor] = []
    for batch, target in _batches(seq, ex, _SCORE_BLOCK, config.max_history, device):
        u = net(products, batch)
        if target.numel() > 1:
            losses.append(float(_softmax_loss(u, products, target, net.temperature(), None, None)))
        hits.append(_recall(u, products, batch, target, config.valid_k))
        base.append(
            _recall(baseline_mean(products, batch, config), products, batch, target, config.valid_k)
        )
    loss = float(np.mean(losses)) if losses else float("nan")
    return loss, float(torch.cat(hits).mean()), float(torch.cat(base).mean())


@torch.inference_mode()
def _calibrate_temperature(
    products: torch.Tensor,
    seq: EventSequences,
    ex: _Examples,
    config: UserTowerConfig,
    log_count: torch.Tensor | None,
    device: str,
    gen: torch.Generator,
) -> float:
    """The grid temperature with the lowest baseline training loss (first 16 batches)."""
    grid = np.geomspace(0.01, 1.0, 21)
    losses = np.zeros(len(grid))
    for i, (batch, target) in enumerate(
        _batches(seq, ex, config.batch_size, config.max_history, device)
    ):
        if i == 16:
            break
        if target.numel() < 2:
            continue
        base = baseline_mean(products, batch, config)
        negatives = _negatives(len(products), config, gen, device)
        for j, tau in enumerate(grid):
            t = torch.tensor(float(tau), device=device)
            losses[j] += float(_softmax_loss(base, products, target, t, negatives, log_count))
    return float(grid[int(np.argmin(losses))])


def _negatives(
    n_products: int, config: UserTowerConfig, gen: torch.Generator, device: str
) -> torch.Tensor | None:
    if not config.random_negatives:
        return None
    return torch.randint(n_products, (config.random_negatives,), generator=gen, device=device)


def train_user_tower(
    interactions: Iterable[Interaction],
    product_ids: Sequence[str],
    product_vectors: npt.ArrayLike,
    config: UserTowerConfig,
    *,
    progress: bool = True,
) -> tuple[UserTower, dict[str, Any]]:
    """Train a user tower on the given interactions (and nothing else).

    Args:
        interactions: The events the tower may learn from, any order (for an evaluation,
            only those before the cutoff); events on unknown products are skipped.
        product_ids: Ids of the rows of ``product_vectors``.
        product_vectors: ``(len(product_ids), dim)`` frozen content vectors.
        config: Architecture and training settings.
        progress: Log one line per epoch at INFO (else at DEBUG).

    Returns:
        The tower (best validation epoch) and a JSON-ready report: epochs run, best epoch,
        seconds, example counts, per-epoch train/valid loss and valid recall@k, and the
        baseline's valid recall@k on the same targets.

    Raises:
        NewArrivalsError: when there are no training targets (every user has fewer than
            two usable events).
    """
    started = time.monotonic()
    # The budget counts from here: preparing the examples is part of training's cost.
    budget = TimeBudget(config.max_minutes)
    device = resolve_device(config.device)
    vectors = ArrayProductVectors(product_ids, product_vectors)
    seq = EventSequences.of(interactions, vectors.row_of)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(seq.user_ids))
    n_valid = round(config.valid_fraction * len(order)) if len(order) >= 2 else 0
    if config.valid_fraction > 0 and len(order) >= 2:
        n_valid = min(max(n_valid, 1), len(order) - 1)
    train_ex = _examples(seq, sorted(order[n_valid:].tolist()), config)
    valid_ex = _examples(seq, sorted(order[:n_valid].tolist()), config)
    if len(valid_ex) > config.max_valid_examples:
        keep = np.sort(rng.choice(len(valid_ex), config.max_valid_examples, replace=False))
        valid_ex = valid_ex.take(keep.astype(np.int64))
    if len(train_ex) == 0:
        raise NewArrivalsError(
            f"no training targets: {len(seq.user_ids)} users with events on the "
            f"{len(vectors)} known products, but none has an event of type "
            f"{[e.value for e in config.target_events]} after an earlier one; pass more "
            "interactions or widen target_events."
        )
    log = logger.info if progress else logger.debug
    log(
        "user tower: %d train / %d valid users, %d / %d targets, %d products (dim %d), %s",
        len(order) - n_valid, n_valid, len(train_ex), len(valid_ex), len(vectors), vectors.dim,
        device,
    )  # fmt: skip

    fork_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        gen = torch.Generator(device=device).manual_seed(config.seed)
        products = torch.as_tensor(vectors.matrix, device=device)
        log_count = None
        if config.logq_correction:
            share = np.bincount(train_ex.target, minlength=len(vectors)) / len(train_ex)
            expected = min(config.batch_size, len(train_ex)) * share
            expected += config.random_negatives / len(vectors)
            log_count = torch.as_tensor(
                np.log(np.maximum(expected, 1e-12)), dtype=torch.float32, device=device
            )
        temperature = config.temperature
        if temperature is None:
            temperature = _calibrate_temperature(
                products, seq, train_ex, config, log_count, device, gen
            )
            log("user tower: calibrated temperature %.3g", temperature)
        net = UserTowerNet(vectors.dim, config, temperature).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        history: list[dict[str, float | None]] = []
        initial_recall, baseline_recall = -math.inf, float("nan")
        if len(valid_ex):
            loss0, initial_recall, baseline_recall = _evaluate(
                net, products, seq, valid_ex, config, device
            )
            # Epoch 0 is the untrained tower, i.e. the baseline: it competes for "best".
            history.append(
                {
                    "epoch": 0,
                    "train_loss": None,
                    "valid_loss": loss0,
                    "valid_recall": initial_recall,
                }
            )

        def run_epoch(epoch: int, budget: TimeBudget) -> EpochOutcome[dict[str, float | None]]:
            net.train()
            perm = torch.randperm(len(train_ex), generator=gen, device=device).cpu().numpy()
            shuffled = train_ex.take(perm.astype(np.int64))
            total, steps = 0.0, 0
            for batch, target in _batches(
                seq, shuffled, config.batch_size, config.max_history, device
            ):
                if target.numel() < 2:
                    continue  # a lone example has no in-batch negative
                negatives = _negatives(len(vectors), config, gen, device)
                loss = _softmax_loss(
                    net(products, batch),
                    products,
                    target,
                    net.temperature(),
                    negatives,
                    log_count,
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
                if budget.expired():
                    break
            row: dict[str, float | None] = {"epoch": epoch, "train_loss": total / max(steps, 1)}
            score = None
            if len(valid_ex):
                v_loss, score, _ = _evaluate(net, products, seq, valid_ex, config, device)
                row.update(valid_loss=v_loss, valid_recall=score)
            log(
                "user tower epoch %d: %s",
                epoch,
                {k: v if v is None else round(v, 4) for k, v in row.items()},
            )
            return EpochOutcome(record=row, score=score)

        run = run_epochs(
            net,
            run_epoch,
            max_epochs=config.epochs,
            budget=budget,
            patience=config.patience,
            initial_score=initial_recall,
            score_name="validation recall",
        )
        history.extend(run.records)
    net.eval()
    report: dict[str, Any] = {
        "epochs": run.epochs_run,
        "best_epoch": run.best_epoch,
        "stopped_early": run.epochs_run < config.epochs,
        "timed_out": run.timed_out,
        "seconds": round(time.monotonic() - started, 3),
        "device": device,
        "n_products": len(vectors),
        "dim": vectors.dim,
        "n_train_users": len(order) - n_valid,
        "n_valid_users": n_valid,
        "n_train_examples": len(train_ex),
        "n_valid_examples": len(valid_ex),
        "valid_k": config.valid_k,
        "valid_recall": run.best_score if len(valid_ex) else None,
        "valid_recall_baseline": baseline_recall if len(valid_ex) else None,
        "temperature_initial": temperature,
        "temperature": float(net.temperature().detach()),
        "event_weights": {
            e.value: float(net.log_event_weight[EVENT_CODE[e]].detach().exp()) for e in EventType
        },
        "half_life_days": float(net.log_half_life.detach().exp()),
        "history": history,
    }
    return UserTower(net, config, vectors.dim, device=device, report=report), report
