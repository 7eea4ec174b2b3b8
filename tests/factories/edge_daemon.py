"""Fakes and helpers for edge daemon tests: a pipeline that closes a segment per advert, a
list-backed advertisement source, a backend that acks every fares batch, and config."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from busbell import AdvRecord, DeviceKey, Topics, TraceRecord
from busbell._mqtt import MqttSession, MqttSettings
from edge._segment import SegmentDraft
from edge._source import AdvertisementSink
from edge.config import EdgeConfig
from tests.factories.drafts import synthetic_draft
from tests.factories.mqtt import FakeBroker

__all__ = [
    "KEY",
    "NOW",
    "Backend",
    "FakePipeline",
    "FakeStats",
    "ListSource",
    "QueueSource",
    "adv",
    "config",
    "until",
]

KEY = DeviceKey.from_seed(bytes(range(32)))


NOW = 1_790_000_000.0


@dataclass
class FakeStats:
    adverts_seen: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    tokens_in_range: int = 0


class FakePipeline:
    """Closes one segment per advert with rssi -30; rejects rssi -99 as 'stale'."""

    def __init__(self) -> None:
        self._stats = FakeStats()
        self.records: list[TraceRecord] = []
        self.n = 0
        self.finished = False
        self.keys_changed: list[list[int]] = []

    @property
    def stats(self) -> FakeStats:
        return self._stats

    def feed(self, rec: TraceRecord) -> list[SegmentDraft]:
        self.records.append(rec)
        if isinstance(rec, AdvRecord):
            self._stats.adverts_seen += 1
            if rec.rssi == -99:
                self._stats.rejected["stale"] = self._stats.rejected.get("stale", 0) + 1
            if rec.rssi == -30:
                self.n += 1
                return [synthetic_draft(self.n)]
        return []

    def fleet_keys_changed(self, days: Iterable[int]) -> None:
        self.keys_changed.append(sorted(days))

    def finish(self, t: float) -> list[SegmentDraft]:
        self.finished = True
        self.n += 1
        return [synthetic_draft(self.n)]

    def on_board(self) -> int:
        return self.n

    def active_flags(self) -> dict[str, int]:
        return {"alight_request": 0}


class ListSource:
    name = "list"

    def __init__(self, recs: list[AdvRecord]) -> None:
        self.recs = recs

    async def run(self, sink: AdvertisementSink) -> None:
        for r in self.recs:
            sink(r)
        await asyncio.Event().wait()


class QueueSource:
    """An advertisement source the test feeds through its queue."""

    name = "queue"

    def __init__(self) -> None:
        self.q: asyncio.Queue[AdvRecord] = asyncio.Queue()

    async def run(self, sink: AdvertisementSink) -> None:
        while True:
            sink(await self.q.get())


def adv(t: float, rssi: int) -> AdvRecord:
    return AdvRecord(t, "aa:bb", rssi, {0xFFFF: bytes(24)})


def config(tmp_path: Path, broker: Any, prefix: str, **kw: Any) -> EdgeConfig:
    """An edge config for bus-0042 on ``broker`` (an address, or a FakeBroker)."""
    cfg = EdgeConfig(bus_id="bus-0042", store=tmp_path / "fares.db", source="trace")
    where = {} if isinstance(broker, FakeBroker) else {"host": broker.host, "port": broker.port}
    mqtt = replace(
        cfg.mqtt,
        **where,
        prefix=prefix,
        client_id=f"edge-{uuid.uuid4().hex[:8]}",
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )
    return replace(cfg, mqtt=mqtt, **kw)


class Backend:
    """Acks every fares batch of ``bus``, keeps its statuses and occupancy messages.

    ``broker`` is a real broker's address (``.host``, ``.port``) or a
    :class:`tests.factories.mqtt.FakeBroker`; enter ``.s`` before :meth:`run`.
    """

    def __init__(self, broker: Any, prefix: str, bus: str) -> None:
        factory = broker.session if isinstance(broker, FakeBroker) else MqttSession
        settings = (
            MqttSettings(prefix=prefix)
            if isinstance(broker, FakeBroker)
            else MqttSettings(host=broker.host, port=broker.port, prefix=prefix)
        )
        self.s = factory(settings, f"backend-{uuid.uuid4().hex[:8]}", clean_start=True)
        self.t = Topics(prefix)
        self.bus = bus
        self.seqs: list[int] = []
        self.status: list[dict[str, Any]] = []
        self.occupancy: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        """Set once the broker acknowledged the subscriptions (SUBACK)."""

    async def run(self) -> None:
        await self.s.subscribe(
            [self.t.fares(self.bus), self.t.status(self.bus), self.t.occupancy(self.bus)]
        )
        self.ready.set()
        async for m in self.s.messages():
            body = json.loads(m.payload) if m.payload else {}
            if m.topic == self.t.fares(self.bus):
                self.seqs.extend(e["seq"] for e in body["events"])
                await self.s.publish(
                    self.t.fares_ack(self.bus), json.dumps({"upto_seq": self.seqs[-1]}), qos=1
                )
            elif m.topic == self.t.status(self.bus):
                self.status.append(body)
            else:
                self.occupancy.append(body)


async def until(pred: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def run_and_stop_cleanly(
    tmp: Path, pipe: Any, adverts: list[AdvRecord], now: float, **config_kw: Any
) -> None:
    """Run an edge daemon on ``pipe`` (restoring the store's checkpoint under ``tmp``) with
    ``adverts`` as its scanner's, until it has fed them all; then stop it cleanly (its
    SIGTERM path). ``config_kw``: sections of :func:`config` (e.g. ``classifier=``)."""
    from edge._daemon import EdgeDaemon

    broker = FakeBroker()
    daemon = EdgeDaemon(
        config(tmp, broker, "busbell/v1", **config_kw),
        ListSource(adverts),
        lambda: now,
        pipeline=pipe,
        device_key=KEY,
        fleet_keys={},
        session_factory=broker.session,
    )
    task = asyncio.create_task(daemon.run())
    await until(lambda: pipe.t >= adverts[-1].t, 30)
    daemon.request_stop()
    await asyncio.wait_for(task, 30)
