"""Placeholder for the resnet models (issue 14); filled in by its own change."""

from __future__ import annotations

__all__: list[str] = []
