"""Admin: hot swap to the newest index version; the served version and its manifest."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from newarrivals.service.api.deps import RuntimeDep, StateDep
from newarrivals.service.api.live import ReloadInProgressError
from newarrivals.service.api.routers._responses import errors
from newarrivals.service.api.schemas import ReloadPublic, ReloadQuery, VersionPublic

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadPublic,
    responses=errors(401, 409, 503),
    summary="Hot swap to the newest index version",
)
def reload(
    request: Request,
    runtime: RuntimeDep,
    params: Annotated[ReloadQuery, Query()],
) -> ReloadPublic:
    """Loads the newest version under the index root and replays the journal onto it while
    requests are served by the current one, then swaps atomically: no request fails or
    waits on it."""
    metrics = request.app.state.metrics
    try:
        outcome = runtime.reload(force=params.force)
    except ReloadInProgressError:
        metrics.reloads.labels("busy").inc()
        raise
    except Exception as exc:
        metrics.reloads.labels("failed").inc()
        logger.exception("reload failed")
        state = runtime.state
        still = state.version.version if state is not None else "nothing"
        raise HTTPException(
            status_code=500,
            detail=f"reload failed ({type(exc).__name__}: {exc}); still serving {still}.",
        ) from None
    metrics.reloads.labels("swapped" if outcome.swapped else "unchanged").inc()
    return ReloadPublic(
        swapped=outcome.swapped,
        previous_version=outcome.previous_version,
        current_version=outcome.current_version,
        seconds=outcome.seconds,
        replayed_entries=outcome.replayed,
    )


@router.get(
    "/version",
    response_model=VersionPublic,
    responses=errors(401, 503),
    summary="The served version and its manifest",
)
def version(runtime: RuntimeDep, state: StateDep) -> VersionPublic:
    manifest = {k: v for k, v in state.version.manifest.to_dict().items() if k != "content_hashes"}
    with state.lock.read():
        products, users, seq = len(state.store), len(state.users), state.applied_seq
    return VersionPublic(
        version=state.version.version,
        path=str(state.version.path),
        loaded_at=state.loaded_at,
        products=products,
        users=users,
        journal_seq=seq,
        ranker_loaded=runtime.ranker is not None,
        ranker_note=state.ranker_note,
        retrieval=runtime.settings.retrieval,
        rerank_order=(
            None
            if runtime.ranker is None
            else "blend"
            if state.rerank_blend is not None
            else "ranker"
        ),
        rerank_note=state.rerank_note or None,
        manifest=manifest,
    )
