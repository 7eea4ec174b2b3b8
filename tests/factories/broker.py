"""A test's own client on the broker, reading everything under its prefix."""

from __future__ import annotations

import asyncio
import uuid
from typing import Self

from busbell import Topics
from busbell._mqtt import MqttSession, MqttSettings

__all__ = ["BrokerClient"]


class BrokerClient:
    """Subscribes to everything under the prefix and feeds each message to ``_read``.

    Subclasses write ``_read`` and end the reader (``self._reader``) in ``__aexit__``.
    """

    def __init__(self, settings: MqttSettings, name: str) -> None:
        self.s = MqttSession(settings, f"{name}-{uuid.uuid4().hex[:8]}", clean_start=True)
        self.topics = Topics(settings.prefix)
        self.latest: dict[str, bytes] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.s.__aenter__()
        await self.s.subscribe([self.topics.everything()])
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        raise NotImplementedError
