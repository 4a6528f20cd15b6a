"""Dependencies the routes share: the runtime, the ready state, the clock, limits.

They are ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, and a
thread hop per dependency cost more than the lookups themselves (profiled under load).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError

from newarrivals.service.api.live import Runtime
from newarrivals.service.api.settings import ServeSettings, get_settings
from newarrivals.service.api.state import ServingState

__all__ = [
    "ClockDep",
    "RuntimeDep",
    "SettingsDep",
    "StateDep",
    "check_limit",
    "get_clock",
    "get_runtime",
    "get_state",
]


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_state(runtime: Annotated[Runtime, Depends(get_runtime)]) -> ServingState:
    """The state published when the request started (raises NotReadyError -> 503)."""
    return runtime.require_state()


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def get_clock() -> Callable[[], datetime]:
    """The clock behind "now" (new_within_days, default event times); tests override it."""
    return _utc_now


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
StateDep = Annotated[ServingState, Depends(get_state)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
ClockDep = Annotated[Callable[[], datetime], Depends(get_clock)]


def check_limit(loc: tuple[str, ...], value: int, limit: int, setting: str) -> None:
    """A field-level 422 when ``value`` exceeds a configured limit."""
    if value > limit:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": loc,
                    "msg": f"Input should be less than or equal to {limit} (the configured "
                    f"limit, {setting})",
                    "input": value,
                    "ctx": {"le": limit},
                }
            ]
        )
