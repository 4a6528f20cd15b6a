"""The shared training loop: time budget, patience, best-snapshot restore."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.towers.training_loop import (
    BestSnapshot,
    EpochOutcome,
    TimeBudget,
    run_epochs,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _set_weight(model: torch.nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def _scripted(
    model: torch.nn.Linear, scores: list[float | None], clock: FakeClock | None = None
) -> tuple[list[int], Callable[[int, TimeBudget], EpochOutcome[int]]]:
    """An epoch callable that sets the weight to the epoch number and returns a set score."""
    calls: list[int] = []

    def epoch(number: int, budget: TimeBudget) -> EpochOutcome[int]:
        calls.append(number)
        _set_weight(model, float(number))
        if clock is not None:
            clock.now += 30.0
        return EpochOutcome(record=number, score=scores[number - 1])

    return calls, epoch


def test_patience_stops_and_the_best_weights_come_back() -> None:
    model = torch.nn.Linear(1, 1)
    calls, epoch = _scripted(model, [0.1, 0.5, 0.4, 0.3, 0.9])
    run = run_epochs(
        model,
        epoch,
        max_epochs=5,
        budget=TimeBudget(None),
        patience=2,
        score_name="validation NDCG",
    )
    assert calls == [1, 2, 3, 4]
    assert run.records == (1, 2, 3, 4) and run.epochs_run == 4
    assert run.best_epoch == 2 and run.best_score == 0.5
    assert run.stop_reason == "no better validation NDCG for 2 epochs"
    assert not run.timed_out
    assert model.weight[0, 0].item() == 2.0
    assert not model.training


def test_no_epoch_beats_the_initial_score_keeps_the_model_as_it_came() -> None:
    model = torch.nn.Linear(1, 1)
    _set_weight(model, -7.0)
    _, epoch = _scripted(model, [0.2, 0.3])
    run = run_epochs(
        model,
        epoch,
        max_epochs=2,
        budget=TimeBudget(None),
        patience=None,
        initial_score=0.5,
    )
    assert run.stop_reason == "epochs" and run.best_epoch == 0 and run.best_score == 0.5
    assert model.weight[0, 0].item() == -7.0


def test_the_budget_ends_the_run_after_the_epoch_that_spent_it() -> None:
    clock = FakeClock()
    model = torch.nn.Linear(1, 1)
    calls, epoch = _scripted(model, [0.1, 0.2, 0.3, 0.4], clock)
    budget = TimeBudget(1.0, clock=clock)  # 60 s; each epoch takes 30 s
    run = run_epochs(model, epoch, max_epochs=4, budget=budget, patience=None)
    assert calls == [1, 2]
    assert run.timed_out and run.stop_reason == "time limit"
    assert run.best_epoch == 2 and model.weight[0, 0].item() == 2.0
    assert budget.elapsed() == 60.0 and budget.fraction() == 1.0 and budget.expired()


def test_without_validation_every_epoch_is_kept() -> None:
    model = torch.nn.Linear(1, 1)
    _, epoch = _scripted(model, [None, None, None])
    run = run_epochs(model, epoch, max_epochs=3, budget=TimeBudget(None), patience=1)
    assert run.stop_reason == "epochs" and run.best_epoch == 3
    assert run.best_score == -math.inf
    assert model.weight[0, 0].item() == 3.0


def test_epochs_that_do_not_count_use_up_no_patience() -> None:
    model = torch.nn.Linear(1, 1)
    best = BestSnapshot(model, 0.5, patience=1)
    spent = []
    for epoch, counts in ((1, False), (2, True)):
        assert not best.update(model, epoch, 0.4, counts=counts)
        spent.append(best.patience_spent)
    assert spent == [False, True] and best.stale == 1


def test_snapshots_are_copies_kept_on_the_requested_device() -> None:
    model = torch.nn.Linear(1, 1)
    _set_weight(model, 1.0)
    best = BestSnapshot(model, 0.0, patience=None, device="cpu")
    _set_weight(model, 5.0)
    best.restore(model)
    assert model.weight[0, 0].item() == 1.0


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="minutes"):
        TimeBudget(0)
    with pytest.raises(ConfigError, match="patience"):
        BestSnapshot(torch.nn.Linear(1, 1), 0.0, patience=0)
    assert TimeBudget(None).fraction() == 0.0 and not TimeBudget(None).expired()
