"""One router per resource; :func:`newarrivals.service.api.app.create_app` mounts them."""

from __future__ import annotations

from newarrivals.service.api.routers import (
    admin,
    cold_start,
    events,
    health,
    products,
    recommendations,
    users,
)

__all__ = ["admin", "cold_start", "events", "health", "products", "recommendations", "users"]
