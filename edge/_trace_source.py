"""Advertisements replayed from a trace v1 file, paced in real time or flat out.

:class:`TraceSource` reads a trace (``busbell edge record`` output or a simulator
scenario) and hands its ``adv`` records to the sink with their recorded ``t``. Other
record kinds are skipped (the daemon's replay reads those itself). Bad lines are
counted, logged and skipped. With ``speed=None`` records go out as fast as the sink
takes them (the file is read and parsed in a worker thread, a batch at a time); with ``speed=1.0``
the gaps between records' ``t`` are kept, ``2.0`` halves them. ``run`` returns at the
end of the trace.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from busbell import AdvRecord, TraceError, TraceReader, TraceRecord, get_logger
from edge._source import AdvertisementSink

__all__ = ["TraceSource", "TraceSourceStats"]

_BATCH = 512


def _take(records: Iterator[TraceRecord], n: int) -> list[TraceRecord]:
    return list(itertools.islice(records, n))


@dataclass
class TraceSourceStats:
    """Counters of a :class:`TraceSource`.

    Attributes:
        adverts: advertisements handed to the sink.
        skipped: valid records of other kinds.
        errors: bad lines by reason (``invalid``) and sink failures (``sink_error``).
        done: whether the whole trace was replayed.
    """

    adverts: int = 0
    skipped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "adverts": self.adverts,
            "skipped": self.skipped,
            "errors": dict(self.errors),
            "done": self.done,
        }


class TraceSource:
    """Replay a trace file's advertisements.

    Args:
        path: the trace v1 file.
        speed: ``None`` for as fast as possible, else the replay rate (1.0 = real time).
        monotonic: the pacing clock (the event loop's by default).
        name: the source's name in logs.

    Raises:
        ValueError: if ``speed`` is not positive.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        speed: float | None = None,
        *,
        monotonic: Callable[[], float] | None = None,
        name: str = "trace",
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.name = name
        self.path = os.fspath(path)
        self.speed = speed
        self._monotonic = monotonic
        self._log = get_logger("edge.trace_source", source=name, path=self.path)
        self.stats = TraceSourceStats()

    def _count(self, reason: str) -> None:
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1

    def _on_error(self, err: TraceError) -> None:
        self._count("invalid")
        self._log.warning("trace_line_rejected", line=err.line, error=str(err))

    async def run(self, sink: AdvertisementSink) -> None:
        """Replay every advert, then return.

        Raises:
            busbell.TraceError: if the file has no valid meta line.
            OSError: if the file cannot be read.
        """
        now = self._monotonic or asyncio.get_running_loop().time
        start_wall: float | None = None
        start_t = 0.0
        # file reading and JSON parsing run in a worker thread, a batch at a time
        fp = await asyncio.to_thread(open, self.path, encoding="utf-8", errors="surrogateescape")
        try:
            reader = await asyncio.to_thread(TraceReader, fp, on_error=self._on_error)
            self._log.info("trace_replay_started", bus_id=reader.meta.bus_id, speed=self.speed)
            records = iter(reader)
            while batch := await asyncio.to_thread(_take, records, _BATCH):
                for rec in batch:
                    if not isinstance(rec, AdvRecord):
                        self.stats.skipped += 1
                        continue
                    if self.speed is not None:
                        if start_wall is None:
                            start_wall, start_t = now(), rec.t
                        delay = start_wall + (rec.t - start_t) / self.speed - now()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    self.stats.adverts += 1
                    try:
                        sink(rec)
                    except Exception:
                        self._count("sink_error")
                        self._log.exception("trace_sink_error", t=rec.t, addr=rec.addr)
        finally:
            fp.close()
        self.stats.done = True
        self._log.info("trace_replay_finished", adverts=self.stats.adverts)
