"""The HTTP API: FastAPI app, settings, journal, hot-swappable serving state."""

from __future__ import annotations

from newarrivals.service.api.app import create_app
from newarrivals.service.api.settings import ServeSettings, get_settings

__all__ = ["ServeSettings", "create_app", "get_settings"]
