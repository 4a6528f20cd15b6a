"""API-key checks: write and admin routes always, read routes when the settings say so.

The key is read once at start-up (:meth:`ServeSettings.check_security`, which refuses to
start write routes without one) and compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

__all__ = ["API_KEY_HEADER", "require_api_key"]

API_KEY_HEADER = "X-API-Key"

_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The service's API key (NEWARRIVALS_API_KEY).",
)


async def require_api_key(
    request: Request, provided: Annotated[str | None, Security(_header)] = None
) -> None:
    """Let the request through only with the configured key.

    Raises:
        HTTPException: 401 when the header is missing or wrong.
    """
    expected: str | None = request.app.state.api_key
    if expected is None:
        return
    if provided is None or not hmac.compare_digest(
        provided.encode("utf-8"), expected.encode("utf-8")
    ):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=f"missing or wrong API key; send it in the {API_KEY_HEADER} header.",
            headers={"WWW-Authenticate": "ApiKey"},
        )
