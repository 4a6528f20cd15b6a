"""The FastAPI application: :func:`create_app` wires settings, routers, errors and metrics.

Routes (all JSON, versioned under ``/v1``; OpenAPI at ``/docs`` and ``/openapi.json``):

==========================================  ======  =====================================
``/v1/users/{user_id}/recommendations``     GET     read
``/v1/sessions/recommendations``            POST    read
``/v1/products/{product_id}``               GET     read
``/v1/products/{product_id}/similar``       GET     read
``/v1/cold-start`` (``/upload``)            POST    read (nothing is stored)
``/v1/products/{product_id}``               PUT     write (API key)
``/v1/products/{product_id}``               DELETE  write (API key)
``/v1/events``                              POST    write (API key)
``/v1/users/{user_id}``                     GET     privacy (API key)
``/v1/users/{user_id}``                     DELETE  privacy: erasure (API key)
``/v1/admin/reload``                        POST    admin (API key)
``/v1/admin/version``                       GET     admin (API key)
``/healthz``, ``/readyz``, ``/metrics``     GET     never keyed
==========================================  ======  =====================================

The index loads in a background thread (``load_in_background``): ``/healthz`` answers at
once, ``/readyz`` and the other routes answer 503 until the state is published.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from newarrivals.indexer.errors import ConfigError, NewArrivalsError, UnknownProductError
from newarrivals.service.api.limits import BodyLimitMiddleware, too_large_detail
from newarrivals.service.api.live import (
    NothingToEncodeError,
    NotReadyError,
    ReloadInProgressError,
    Runtime,
)
from newarrivals.service.api.metrics import Metrics, MetricsMiddleware
from newarrivals.service.api.queries import RankerMissingError
from newarrivals.service.api.routers import (
    admin,
    cold_start,
    events,
    health,
    products,
    recommendations,
    users,
    web,
)
from newarrivals.service.api.security import require_api_key
from newarrivals.service.api.settings import ServeSettings, get_settings

__all__ = ["WEB_DIR", "create_app"]

logger = logging.getLogger(__name__)

#: A web page, when one is installed, is served at ``/`` from here.
WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "static"

_VERSION = "1"


def _load(runtime: Runtime) -> None:
    try:
        runtime.start()
    except Exception:  # recorded in runtime.load_error, reported by /readyz
        logger.error("the service stays unready: %s", runtime.load_error)


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """Build the application.

    Args:
        settings: The settings to serve with (default: :func:`get_settings`, from the
            environment). They are installed as the override of ``get_settings``.

    Raises:
        ConfigError: when write or admin routes are enabled without an API key (naming
            the variable to set), or the index path does not exist.
    """
    settings = settings or get_settings()
    api_key = settings.check_security()
    if not settings.index.exists():
        raise ConfigError(
            f"index {settings.index} does not exist; build one with `newarrivals build-index` "
            "(or `newarrivals demo`) and pass its root with NEWARRIVALS_INDEX or --index."
        )
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        loader: threading.Thread | None = None
        if settings.load_in_background:
            loader = threading.Thread(
                target=_load, args=(runtime,), name="newarrivals-load", daemon=True
            )
            loader.start()
        else:
            await anyio.to_thread.run_sync(runtime.start)
        try:
            yield
        finally:
            if loader is not None and loader.is_alive():
                logger.info("shutting down while the index is still loading")
            else:
                runtime.close()

    app = FastAPI(
        title="newarrivals",
        version=_VERSION,
        summary="Recommendations for brand-new products: users, sessions, similar products, "
        "cold-start audiences, live ingestion and hot index swaps.",
        lifespan=lifespan,
    )
    app.state.api_key = api_key
    app.state.metrics = metrics
    app.state.settings = settings

    async def installed_settings() -> ServeSettings:
        return settings

    app.dependency_overrides[get_settings] = installed_settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: refused bodies are counted and timed too.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _install_error_handlers(app, settings)

    keyed = [Depends(require_api_key)]
    reads = keyed if settings.require_key_for_reads else []
    app.include_router(health.router)
    app.include_router(recommendations.router, dependencies=reads)
    app.include_router(products.read_router, dependencies=reads)
    app.include_router(cold_start.router, dependencies=reads)
    app.include_router(web.read_router, dependencies=reads)
    if settings.writes_enabled:
        app.include_router(products.write_router, dependencies=keyed)
        app.include_router(events.router, dependencies=keyed)
        app.include_router(web.user_list_router, dependencies=keyed)
        app.include_router(users.router, dependencies=keyed)
        app.include_router(admin.router, dependencies=keyed)
    if WEB_DIR.is_dir():
        # Mounted last: every API route above is matched first.
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    return app


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    async def not_ready(_: Request, exc: Exception) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": "5"})

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return _error(404, str(exc))

    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return _error(409, str(exc))

    async def unprocessable(_: Request, exc: Exception) -> JSONResponse:
        # The same shape as FastAPI's own 422s (a list of located errors), so clients
        # and the OpenAPI schema see one 422 format.
        loc = ["body"] if isinstance(exc, NothingToEncodeError) else ["request"]
        error = {"type": "value_error", "loc": loc, "msg": str(exc), "input": None}
        return JSONResponse({"detail": [error]}, status_code=422)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace in a response: log it under an id the client can quote.
        incident = uuid.uuid4().hex[:12]
        logger.error("unhandled error (incident %s)", incident, exc_info=exc)
        return _error(500, f"internal error (incident {incident}); see the server log.")

    async def http_error(request: Request, exc: Exception) -> Any:
        if not isinstance(exc, StarletteHTTPException):
            return await unexpected(request, exc)
        if exc.status_code == 413:
            return _error(413, too_large_detail(settings.max_body_bytes))
        return await http_exception_handler(request, exc)

    handlers: list[tuple[type[Exception], Callable[[Request, Exception], Any]]] = [
        (NotReadyError, not_ready),
        (UnknownProductError, not_found),
        (RankerMissingError, conflict),
        (ReloadInProgressError, conflict),
        (NothingToEncodeError, unprocessable),
        (ConfigError, unprocessable),
        (NewArrivalsError, unexpected),
        (StarletteHTTPException, http_error),
        (Exception, unexpected),
    ]
    for exc_type, handler in handlers:
        app.add_exception_handler(exc_type, handler)


def _openapi_with_limits(app: FastAPI, settings: ServeSettings) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with the configured limits as the schema maxima."""
    limits = {
        "k": settings.max_k,
        "nearest_k": settings.max_k,
        "audience_size": settings.audience_max_users,
        "reach_k": settings.audience_max_k,
    }

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for param in operation.get("parameters", []):
                    if param.get("in") == "query" and param.get("name") in limits:
                        param.setdefault("schema", {})["maximum"] = limits[param["name"]]
        for component in schema.get("components", {}).get("schemas", {}).values():
            props = component.get("properties", {})
            for name, limit in limits.items():
                if name in props:
                    props[name]["maximum"] = limit
            if component.get("title") == "EventsRequest" and "events" in props:
                props["events"]["maxItems"] = settings.max_events_per_request
        app.openapi_schema = schema
        return schema

    return build
