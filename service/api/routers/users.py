"""Privacy: what the service holds about a user, and erasure (right to be forgotten)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from newarrivals.service.api import queries
from newarrivals.service.api.deps import RuntimeDep, StateDep
from newarrivals.service.api.routers._responses import errors
from newarrivals.service.api.schemas import ErasurePublic, UserPublic

__all__ = ["router"]

router = APIRouter(prefix="/v1/users", tags=["users (privacy)"])

UserId = Annotated[str, Path(min_length=1, max_length=256, examples=["U00001"])]


@router.get(
    "/{user_id}", response_model=UserPublic, responses=errors(401, 503), summary="User data"
)
def get_user(user_id: UserId, state: StateDep) -> UserPublic:
    """The events count, recent and purchased products the service holds for a user."""
    return queries.user_profile(state, user_id)


@router.delete(
    "/{user_id}",
    response_model=ErasurePublic,
    responses=errors(401, 503),
    summary="Erase a user",
)
def erase_user(user_id: UserId, runtime: RuntimeDep) -> ErasurePublic:
    """Deletes the user's journaled events, vector, history and place in the user index,
    and records the erasure (under a pseudonymous key) so their base-catalogue
    interactions stay erased after a restart or reload. Idempotent."""
    runtime.require_state()
    erased, deleted = runtime.erase_user(user_id)
    return ErasurePublic(user_id=user_id, erased=erased, journal_rows_deleted=deleted)
