"""Liveness, readiness and Prometheus metrics (never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from newarrivals.service.api.deps import RuntimeDep
from newarrivals.service.api.schemas import HealthPublic, ReadyPublic

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic, summary="The process is alive")
def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyPublic,
    responses={503: {"model": ReadyPublic, "description": "Still loading, or loading failed."}},
    summary="The index and models are loaded",
)
def readyz(runtime: RuntimeDep) -> ReadyPublic | JSONResponse:
    state = runtime.state
    if state is not None:
        return ReadyPublic(status="ready", version=state.version.version)
    body = ReadyPublic(
        status="failed" if runtime.load_error else "loading", detail=runtime.load_error
    )
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
    summary="Prometheus metrics",
)
def metrics(request: Request, runtime: RuntimeDep) -> Response:
    m = request.app.state.metrics
    state = runtime.state
    if state is not None:
        with state.lock.read():
            products, users, seq = len(state.store), len(state.users), state.applied_seq
        m.set_state(products=products, users=users, version=state.version.version, journal_seq=seq)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
