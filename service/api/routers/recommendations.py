"""Recommendations for a known user and for an anonymous session.

The routes are ``async``: without re-ranking a request is about a millisecond of NumPy and
FAISS work, cheaper than the thread hops FastAPI adds around a plain ``def`` route, so it
runs on the event loop. The re-ranking path (a ranker forward pass, 10+ ms) runs in a
worker thread so it never holds up the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVarTuple

import anyio
from fastapi import APIRouter, Path, Query

from newarrivals.service.api import queries
from newarrivals.service.api.deps import ClockDep, RuntimeDep, SettingsDep, StateDep, check_limit
from newarrivals.service.api.routers._responses import errors
from newarrivals.service.api.schemas import (
    RecommendationsPublic,
    SessionRecommendationRequest,
    UserRecommendationQuery,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["recommendations"])

UserId = Annotated[str, Path(min_length=1, max_length=256, examples=["U00001"])]
Args = TypeVarTuple("Args")


async def _answer(
    rerank: bool,
    query: Callable[[*Args], RecommendationsPublic],
    *args: *Args,
) -> RecommendationsPublic:
    """``query(*args)``: in a worker thread when it re-ranks, else on the loop."""
    if rerank:
        return await anyio.to_thread.run_sync(query, *args)
    return query(*args)


@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationsPublic,
    responses=errors(401, 409, 503),
    summary="Top products for a user",
)
async def user_recommendations(
    user_id: UserId,
    params: Annotated[UserRecommendationQuery, Query()],
    runtime: RuntimeDep,
    state: StateDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> RecommendationsPublic:
    """Products nearest the user's vector that pass the filters, best first, each with the
    recent product it is closest to. Products the user bought are left out unless
    ``include_purchased``. An unknown user gets the cold-user fallback (popular now),
    flagged with ``"fallback": true``. With ``rerank`` the ranker re-scores the top
    ``rerank_depth`` candidates and each item carries its probability."""
    check_limit(("query", "k"), params.k, settings.max_k, "NEWARRIVALS_MAX_K")
    return await _answer(
        params.rerank, queries.recommendations_for_user, runtime, state, user_id, params, clock()
    )


@router.post(
    "/sessions/recommendations",
    response_model=RecommendationsPublic,
    responses=errors(400, 401, 409, 413, 503),
    summary="Top products for an anonymous session",
)
async def session_recommendations(
    body: SessionRecommendationRequest,
    runtime: RuntimeDep,
    state: StateDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> RecommendationsPublic:
    """Like a user's recommendations, for a visitor who sends their recent product ids or
    events (newest first). Ids that are not indexed are ignored and listed in
    ``ignored_product_ids``; with none left the fallback answers."""
    check_limit(("body", "k"), body.k, settings.max_k, "NEWARRIVALS_MAX_K")
    return await _answer(
        body.rerank, queries.recommendations_for_session, runtime, state, body, clock()
    )
