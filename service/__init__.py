"""Serving stage: the HTTP API (:mod:`newarrivals.service.api`), the ``newarrivals``
command line (:mod:`newarrivals.service.cli`) and the first-run demo
(:mod:`newarrivals.service.demo`)."""

from __future__ import annotations

__all__: list[str] = []
