"""Train under a wall-clock budget, keep the best validated weights, stop early.

Every trainer in the project (the image and user towers, the ranker and its distilled
student) runs the same outer loop: epochs until a maximum, each epoch trained and then
validated, the weights of the best-scoring epoch kept aside, and a stop when the time
budget is spent or the score has not improved for ``patience`` epochs. The inner step loop
stays with each trainer (losses, schedules and batching differ); it asks the shared
:class:`TimeBudget` whether to take another step, so a slow epoch cannot overrun the budget.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> scores = iter([0.5, 0.4, 0.3])
    >>> def epoch(number: int, budget: TimeBudget) -> EpochOutcome[int]:
    ...     return EpochOutcome(record=number, score=next(scores))
    >>> run = run_epochs(model, epoch, max_epochs=3, budget=TimeBudget(None), patience=1)
    >>> run.best_epoch, run.stop_reason, run.records
    (1, 'no better validation score for 1 epochs', (1, 2))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from newarrivals.indexer.errors import ConfigError

if TYPE_CHECKING:
    import torch

R = TypeVar("R")

STOP_EPOCHS = "epochs"
STOP_TIME_LIMIT = "time limit"


class TimeBudget:
    """A wall-clock budget that starts when it is created.

    Args:
        minutes: The budget; ``None`` for no limit.
        clock: Seconds from an arbitrary origin (a fake one in tests).
    """

    def __init__(
        self, minutes: float | None, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if minutes is not None and not minutes > 0:
            raise ConfigError(f"minutes must be positive or None, got {minutes}.")
        self._clock = clock
        self._started = clock()
        self.seconds = math.inf if minutes is None else 60.0 * minutes

    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return self._clock() - self._started

    def fraction(self) -> float:
        """Share of the budget spent (0 when there is no limit), for time-based schedules."""
        return 0.0 if math.isinf(self.seconds) else self.elapsed() / self.seconds

    def expired(self) -> bool:
        """Whether the budget is spent."""
        return self.elapsed() >= self.seconds


class BestSnapshot:
    """The best validation score so far, the weights that had it, and the patience left.

    Args:
        model: The model whose weights are snapshotted (its current weights are the first).
        score: The current weights' validation score (higher is better); ``-inf`` when
            the model as it comes must not compete.
        patience: Epochs without a better score before :attr:`patience_spent`; ``None``
            for no early stopping.
        device: Where snapshots are kept (``"cpu"`` spares accelerator memory); ``None``
            keeps them next to the weights.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        score: float,
        patience: int | None,
        *,
        device: str | None = None,
    ) -> None:
        if patience is not None and patience < 1:
            raise ConfigError(f"patience must be a positive integer or None, got {patience}.")
        self.best = score
        self.best_epoch = 0
        self.stale = 0
        self._patience = patience
        self._device = device
        self._state = self._copy(model)

    def _copy(self, model: torch.nn.Module) -> dict[str, Any]:
        if self._device is None:
            return {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {k: v.detach().to(self._device, copy=True) for k, v in model.state_dict().items()}

    def update(
        self, model: torch.nn.Module, epoch: int, score: float | None, *, counts: bool = True
    ) -> bool:
        """Record an epoch's score; returns whether its weights became the best.

        ``score=None`` (nothing to validate on) keeps every epoch's weights, so the last
        epoch wins. ``counts=False`` keeps a better model but uses up no patience (an
        epoch inside a learning-rate warmup is not a plateau).
        """
        if score is None or score > self.best:
            if score is not None:
                self.best, self.stale = score, 0
            self.best_epoch = epoch
            self._state = self._copy(model)
            return True
        if counts:
            self.stale += 1
        return False

    @property
    def patience_spent(self) -> bool:
        """Whether ``patience`` epochs in a row brought no better score."""
        return self._patience is not None and self.stale >= self._patience

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best weights back into ``model`` and put it in eval mode."""
        model.load_state_dict(self._state)
        model.eval()


@dataclass(frozen=True)
class EpochOutcome(Generic[R]):
    """What one trained and validated epoch hands back to :func:`run_epochs`.

    Attributes:
        record: The trainer's own per-epoch record (losses, metrics, seconds).
        score: The validation score, higher is better; ``None`` when there is nothing to
            validate on (every epoch is then kept).
        counts_for_patience: ``False`` for an epoch that must not use up patience.
    """

    record: R
    score: float | None
    counts_for_patience: bool = True


@dataclass(frozen=True)
class TrainingRun(Generic[R]):
    """The outcome of :func:`run_epochs`; the model already holds the best weights.

    Attributes:
        records: One record per epoch run, in order.
        best_epoch: The epoch whose weights were kept (0: the model as it came).
        best_score: Its validation score (the initial score if no epoch beat it).
        stop_reason: ``"epochs"``, ``"time limit"`` or ``"no better <score_name> for
            <n> epochs"``.
    """

    records: tuple[R, ...]
    best_epoch: int
    best_score: float
    stop_reason: str

    @property
    def epochs_run(self) -> int:
        """How many epochs ran."""
        return len(self.records)

    @property
    def timed_out(self) -> bool:
        """Whether the time budget ended the run."""
        return self.stop_reason == STOP_TIME_LIMIT


def run_epochs(
    model: torch.nn.Module,
    epoch: Callable[[int, TimeBudget], EpochOutcome[R]],
    *,
    max_epochs: int,
    budget: TimeBudget,
    patience: int | None,
    initial_score: float = -math.inf,
    snapshot_device: str | None = None,
    score_name: str = "validation score",
) -> TrainingRun[R]:
    """Run up to ``max_epochs`` epochs, keep the best, restore it into ``model``.

    After each epoch the loop stops when the budget is spent (checked after validation
    too, so a validation that runs past the deadline starts no further epoch) or when
    ``patience`` epochs in a row brought no better score. The best weights are then
    loaded back and the model put in eval mode.

    Args:
        model: The model being trained (its weights are snapshotted and restored).
        epoch: Trains and validates epoch ``number`` (1-based); it should check
            ``budget.expired()`` between steps and stop the epoch early when it is.
        max_epochs: The most epochs to run.
        budget: The wall-clock budget, started by the caller (so the caller decides
            whether set-up counts against it).
        patience: Epochs without improvement before stopping; ``None`` for never.
        initial_score: The untrained model's score: an epoch must beat it to be kept.
        snapshot_device: Where the best weights are kept (see :class:`BestSnapshot`).
        score_name: Names the score in the patience stop reason.

    Returns:
        The per-epoch records, the best epoch and score, and why the loop stopped.
    """
    if max_epochs < 0:
        raise ConfigError(f"max_epochs must be a non-negative integer, got {max_epochs}.")
    best = BestSnapshot(model, initial_score, patience, device=snapshot_device)
    records: list[R] = []
    stop_reason = STOP_EPOCHS
    for number in range(1, max_epochs + 1):
        outcome = epoch(number, budget)
        records.append(outcome.record)
        best.update(model, number, outcome.score, counts=outcome.counts_for_patience)
        if budget.expired():
            stop_reason = STOP_TIME_LIMIT
            break
        if best.patience_spent:
            stop_reason = f"no better {score_name} for {best.stale} epochs"
            break
    best.restore(model)
    return TrainingRun(tuple(records), best.best_epoch, best.best, stop_reason)
