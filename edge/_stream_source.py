"""Advertisements streamed in over a local socket (the simulator's live mode).

:class:`StreamSource` listens on TCP ``127.0.0.1:<port>`` (or a UNIX socket) and reads
JSON Lines in the trace v1 shape, one advertisement per line::

    {"kind":"adv","t":1700000000.25,"addr":"C0:00:00:00:00:01","rssi":-61,
     "mfr":{"65535":"2100..."}}

A ``meta`` line (what :class:`busbell.TraceWriter` writes first) is accepted and
ignored, so a simulator can point a ``TraceWriter`` at the socket. Other record kinds
(``gnss``, ``door``, ``trip``) are counted as ``not_adv`` and skipped; they travel over
MQTT in live mode. Malformed lines are counted by reason, logged and skipped; the
connection stays open. Several clients may be connected at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from busbell import (
    AdvRecord,
    JsonLimits,
    JsonRejected,
    RejectLog,
    TraceError,
    get_logger,
    loads_bounded,
    parse_record,
)
from busbell._mqtt import SessionChange, retry_with_backoff
from edge._source import AdvertisementSink

__all__ = ["StreamSource", "StreamStats"]

MAX_LINE = 64 * 1024
LINE_LIMITS = JsonLimits(max_bytes=MAX_LINE, max_depth=3)
"""An advert line is ``{"kind","t","addr","rssi","mfr":{...}}``: depth 2."""


@dataclass
class StreamStats:
    """Counters of a :class:`StreamSource`.

    Attributes:
        connections: clients accepted so far.
        clients: clients connected now.
        lines: non-empty lines read.
        adverts: advertisements handed to the sink.
        errors: skipped lines by reason (``invalid``, ``not_adv``, ``too_long``,
            ``sink_error``, and the :class:`busbell.JsonRejected` reasons ``not_json``,
            ``too_deep``, ``not_utf8``, ``non_finite``, ``int_range``).
        bind_failures: attempts to listen that failed (address in use, no such
            address); the source retries with backoff and the daemon keeps running.
    """

    connections: int = 0
    bind_failures: int = 0
    clients: int = 0
    lines: int = 0
    adverts: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "connections": self.connections,
            "bind_failures": self.bind_failures,
            "clients": self.clients,
            "lines": self.lines,
            "adverts": self.adverts,
            "errors": dict(self.errors),
        }


class StreamSource:
    """Serve a socket and hand the advertisements written to it to the sink.

    Args:
        host: address to listen on (keep it local: ``127.0.0.1``).
        port: TCP port; 0 picks a free one (read :attr:`address` once :meth:`wait_ready`
            returned).
        clock: if given, re-stamp each advert with this clock instead of its ``t``.
        name: the source's name in logs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] | None = None,
        name: str = "stream",
        _unix_path: str | None = None,
        bind_retry_s: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self.name = name
        self._bind_retry_s = bind_retry_s
        self._host = host
        self._port = port
        self._unix_path = _unix_path
        self._clock = clock
        self._ready = asyncio.Event()
        self._log = get_logger("edge.stream_source", source=name)
        self._rejects = RejectLog(self._log, "stream_line_rejected")
        self.address: tuple[str, int] | str | None = None
        self.stats = StreamStats()

    @classmethod
    def unix(
        cls, path: str | os.PathLike[str], *, clock: Callable[[], float] | None = None
    ) -> StreamSource:
        """A source listening on a UNIX stream socket at ``path`` (replaced if stale)."""
        return cls(clock=clock, name="stream", _unix_path=os.fspath(path))

    async def wait_ready(self) -> None:
        """Return once the socket is listening (then :attr:`address` is set)."""
        await self._ready.wait()

    def _count(self, reason: str) -> None:
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1

    async def run(self, sink: AdvertisementSink) -> None:
        """Listen and serve clients until cancelled."""
        handlers: set[asyncio.Task[None]] = set()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await self._serve(reader, writer, sink)
            finally:
                handlers.discard(task)

        server = await self._listen(on_client)
        self._log.info("stream_source_listening", address=str(self.address))
        self._ready.set()
        try:
            await asyncio.Future()  # serve until cancelled
        finally:
            server.close()
            for task in list(handlers):
                task.cancel()
            if handlers:
                await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()
            if self._unix_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._unix_path)
            self._ready.clear()

    async def _listen(
        self,
        on_client: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> asyncio.Server:
        """Start listening; while the address cannot be bound, retry with backoff.

        A port another process holds must not stop the daemon (its uplink, bells and
        fare store go on): the failure is counted, logged and retried until it binds.
        """

        async def listen() -> asyncio.Server:
            if self._unix_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._unix_path)
                server = await asyncio.start_unix_server(on_client, self._unix_path, limit=MAX_LINE)
                self.address = self._unix_path
            else:
                server = await asyncio.start_server(
                    on_client, self._host, self._port, limit=MAX_LINE
                )
                sockname = server.sockets[0].getsockname()
                self.address = (str(sockname[0]), int(sockname[1]))
            return server

        def failed(change: SessionChange) -> None:
            self.stats.bind_failures += 1
            self._log.warning(
                "stream_source_bind_failed",
                address=self._unix_path or f"{self._host}:{self._port}",
                error=change.error,
                failures=self.stats.bind_failures,
                retry_in_s=round(change.retry_in_s, 2),
            )

        initial_s, max_s = self._bind_retry_s
        return await retry_with_backoff(
            listen, initial_s=initial_s, max_s=max_s, retry_on=(OSError,), on_failure=failed
        )

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sink: AdvertisementSink,
    ) -> None:
        peer = str(writer.get_extra_info("peername") or "unix")
        self.stats.connections += 1
        self.stats.clients += 1
        self._log.info("stream_client_connected", peer=peer)
        lineno = 0
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    raw = exc.partial  # last line without a newline, then EOF
                    if raw.strip():
                        lineno += 1
                        self._line(raw, lineno, peer, sink)
                    break
                except asyncio.LimitOverrunError as exc:
                    lineno += 1
                    self._reject(peer, lineno, "too_long", f"over {MAX_LINE} bytes")
                    await self._skip_line(reader, exc.consumed)
                    continue
                lineno += 1
                if raw.strip():
                    self._line(raw, lineno, peer, sink)
        except (ConnectionError, OSError) as exc:
            self._log.info("stream_client_error", peer=peer, error=str(exc))
        finally:
            self.stats.clients -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self._log.info("stream_client_disconnected", peer=peer, lines=lineno)

    @staticmethod
    async def _skip_line(reader: asyncio.StreamReader, consumed: int) -> None:
        """Drop the rest of an over-long line, up to and including its newline."""
        await reader.readexactly(consumed)
        while True:
            try:
                await reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await reader.readexactly(exc.consumed)

    def _line(self, raw: bytes, lineno: int, peer: str, sink: AdvertisementSink) -> None:
        self.stats.lines += 1
        try:
            obj = loads_bounded(raw, LINE_LIMITS)
        except JsonRejected as exc:
            self._reject(peer, lineno, exc.reason, str(exc))
            return
        if isinstance(obj, dict) and obj.get("kind") == "meta":
            return
        try:
            rec = parse_record(obj, lineno)
        except TraceError as exc:
            self._reject(peer, lineno, "invalid", str(exc))
            return
        if not isinstance(rec, AdvRecord):
            self._reject(peer, lineno, "not_adv", f"kind {type(rec).__name__}")
            return
        if self._clock is not None:
            rec = AdvRecord(self._clock(), rec.addr, rec.rssi, rec.mfr)
        self.stats.adverts += 1
        try:
            sink(rec)
        except Exception:
            self._count("sink_error")
            self._log.exception("stream_sink_error", peer=peer, line=lineno)

    def _reject(self, peer: str, lineno: int, reason: str, detail: str) -> None:
        self._count(reason)
        self._rejects.reject(reason, peer=peer, line=lineno, error=detail)
