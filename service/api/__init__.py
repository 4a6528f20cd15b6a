"""The HTTP API: FastAPI app, settings, journal, hot-swappable serving state."""

from __future__ import annotations

from .app import create_app
from .settings import ServeSettings, get_settings

__all__ = ["ServeSettings", "create_app", "get_settings"]
