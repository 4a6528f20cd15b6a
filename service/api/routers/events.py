"""Events (views, clicks, carts, purchases): journaled, then folded into user vectors."""

from __future__ import annotations

from fastapi import APIRouter, Request

from newarrivals.indexer.catalog.schema import Interaction
from newarrivals.service.api.deps import ClockDep, RuntimeDep, SettingsDep, check_limit
from newarrivals.service.api.routers._responses import errors
from newarrivals.service.api.schemas import EventsAcceptedPublic, EventsRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    response_model=EventsAcceptedPublic,
    responses=errors(400, 401, 404, 413, 503),
    summary="Record user events",
)
def post_events(
    body: EventsRequest,
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> EventsAcceptedPublic:
    """Journals the events durably (one transaction), then updates each user's vector, so
    their next recommendations reflect them. All events must refer to indexed products
    (404 naming the unknown ones otherwise; nothing is recorded then)."""
    check_limit(
        ("body", "events"),
        len(body.events),
        settings.max_events_per_request,
        "NEWARRIVALS_MAX_EVENTS_PER_REQUEST",
    )
    now = clock()
    events = [
        Interaction(e.user_id, e.product_id, e.event, e.timestamp or now) for e in body.events
    ]
    seq = runtime.record_events(events)
    metrics = request.app.state.metrics
    for e in events:
        metrics.events.labels(e.event.value).inc()
    return EventsAcceptedPublic(accepted=len(events), last_seq=seq)
