"""Serving stage: the command-line interface (and, later, the HTTP API)."""

from __future__ import annotations

__all__: list[str] = []
