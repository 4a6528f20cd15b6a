"""Ranking stage: a cross-encoder that re-scores retrieved candidates (not built yet)."""

from __future__ import annotations

__all__: list[str] = []
