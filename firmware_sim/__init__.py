"""busbell firmware_sim."""

from __future__ import annotations

__all__: list[str] = []
