"""Error responses the routes document in OpenAPI (all bodies are ``{"detail": ...}``)."""

from __future__ import annotations

from typing import Any

from newarrivals.service.api.schemas import ErrorPublic

__all__ = ["errors"]

_TEXT = {
    400: "The body could not be parsed (not UTF-8, or not JSON / form data).",
    401: "Missing or wrong API key.",
    404: "Unknown product (the detail names the id).",
    409: "Conflict (e.g. re-ranking without a ranker, a reload already running).",
    413: "Request body over the configured limit.",
    503: "The index is still loading.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorPublic, "description": _TEXT[code]} for code in codes}
