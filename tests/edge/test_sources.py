"""StreamSource over real sockets, TraceSource on real files, BLE settings and errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakError,
)
from dbus_fast import AuthError, DBusError
from structlog.testing import capture_logs

from busbell import AdvRecord, ConfigError, GnssRecord, TraceWriter, describe_config, load_config
from edge._ble import ScannerParams, classify_error
from edge._source import AdvertisementSource
from edge._stream_source import MAX_LINE, StreamSource
from edge._trace_source import TraceSource

TOKEN = bytes(range(24))


def adv_line(t: float, addr: str = "C0:00:00:00:00:01", rssi: int = -60) -> bytes:
    obj = {"kind": "adv", "t": t, "addr": addr, "rssi": rssi, "mfr": {"65535": TOKEN.hex()}}
    return (json.dumps(obj) + "\n").encode()


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(src: Any, sink: Callable[[AdvRecord], None]) -> AsyncIterator[None]:
    task = asyncio.create_task(src.run(sink))
    try:
        await asyncio.wait_for(src.wait_ready(), 5)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- StreamSource ------------------------------------------------------------------


async def test_stream_source_tcp_several_clients_and_bad_lines() -> None:
    src = StreamSource("127.0.0.1", 0)
    got: list[AdvRecord] = []
    with capture_logs() as logs:
        async with running(src, got.append):
            assert isinstance(src.address, tuple)
            host, port = src.address
            r1, w1 = await asyncio.open_connection(host, port)
            r2, w2 = await asyncio.open_connection(host, port)
            w1.write(b'{"kind":"meta","format":"busbell-trace/1","bus_id":"B1"}\n')
            w1.write(adv_line(1.0))
            w1.write(b"not json\n")
            w1.write(b'{"kind":"adv","t":2.0,"addr":"x","rssi":999,"mfr":{}}\n')
            w1.write(b'{"kind":"door","t":2.5,"open":true}\n')
            w1.write(b"\n")
            w2.write(adv_line(3.0, "C0:00:00:00:00:02", -70))
            await w1.drain()
            await w2.drain()
            await eventually(lambda: len(got) == 2 and src.stats.lines == 6)
            assert src.stats.clients == 2
            w1.write(adv_line(4.0))  # the bad lines did not close the connection
            await w1.drain()
            await eventually(lambda: len(got) == 3)
            w1.close()
            w2.close()
            await w1.wait_closed()
            await w2.wait_closed()
            await eventually(lambda: src.stats.clients == 0)
    by_addr = sorted((r.t, r.addr, r.rssi) for r in got)
    assert by_addr == [
        (1.0, "C0:00:00:00:00:01", -60),
        (3.0, "C0:00:00:00:00:02", -70),
        (4.0, "C0:00:00:00:00:01", -60),
    ]
    assert got[0].mfr == {0xFFFF: TOKEN}
    assert src.stats.errors == {"not_json": 1, "invalid": 1, "not_adv": 1}
    assert src.stats.connections == 2
    rejected = [e for e in logs if e["event"] == "stream_line_rejected"]
    assert sorted(e["reason"] for e in rejected) == ["invalid", "not_adv", "not_json"]
    assert all(e["line"] in (3, 4, 5) for e in rejected)
    del r1, r2


async def test_stream_source_too_long_line_is_skipped_and_last_line_without_newline() -> None:
    src = StreamSource("127.0.0.1", 0)
    got: list[AdvRecord] = []
    async with running(src, got.append):
        assert isinstance(src.address, tuple)
        _r, w = await asyncio.open_connection(*src.address)
        w.write(b"x" * (MAX_LINE * 3) + b"\n")
        w.write(adv_line(5.0))
        w.write(adv_line(6.0).rstrip(b"\n"))  # no final newline, then EOF
        await w.drain()
        w.close()
        await w.wait_closed()
        await eventually(lambda: len(got) == 2)
    assert [r.t for r in got] == [5.0, 6.0]
    assert src.stats.errors == {"too_long": 1}


async def test_stream_source_hostile_lines_are_counted_and_the_connection_kept() -> None:
    src = StreamSource("127.0.0.1", 0)
    got: list[AdvRecord] = []
    with capture_logs() as logs:
        async with running(src, got.append):
            assert isinstance(src.address, tuple)
            _r, w = await asyncio.open_connection(*src.address)
            w.write(b"[" * 5000 + b"]" * 5000 + b"\n")  # 10 KB, under the line limit
            w.write(b'{"kind":"adv","t":NaN,"addr":"a","rssi":-60,"mfr":{}}\n')
            w.write(b'{"kind":"adv","t":1e999,"addr":"a","rssi":-60,"mfr":{}}\n')
            w.write(b'{"kind":"adv","t":1,"addr":"a","rssi":' + str(2**70).encode() + b"}\n")
            w.write(b'{"kind":"adv","t":1.0,"addr":"\xff\xfe","rssi":-60,"mfr":{}}\n')
            w.write(adv_line(7.0))  # still served on the same connection
            await w.drain()
            await eventually(lambda: len(got) == 1)
            assert src.stats.clients == 1
            assert src.stats.connections == 1
            w.close()
            await w.wait_closed()
    assert [r.t for r in got] == [7.0]
    assert src.stats.errors == {"too_deep": 1, "non_finite": 2, "int_range": 1, "not_utf8": 1}
    rejected = [e for e in logs if e["event"] == "stream_line_rejected"]
    assert [e["line"] for e in rejected] == [1, 2, 3, 4, 5]
    assert all(len(e["error"]) <= 200 for e in rejected)


async def test_stream_source_unix_socket_and_restamping(tmp_path: Path) -> None:
    path = tmp_path / "adv.sock"
    path.write_text("stale")  # a stale file is replaced
    src = StreamSource.unix(path, clock=lambda: 42.0)
    got: list[AdvRecord] = []
    async with running(src, got.append):
        assert src.address == str(path)
        _r, w = await asyncio.open_unix_connection(str(path))
        writer = TraceWriter(_SocketText(w), "B9")
        writer.write(AdvRecord(1.0, "C0:00:00:00:00:03", -80, {0xFFFF: TOKEN}))
        writer.write(GnssRecord(1.0, 37.5, 127.0, 3.0))
        await w.drain()
        await eventually(lambda: len(got) == 1 and src.stats.lines == 3)
        w.close()
        await w.wait_closed()
    assert got == [AdvRecord(42.0, "C0:00:00:00:00:03", -80, {0xFFFF: TOKEN})]
    assert src.stats.errors == {"not_adv": 1}
    assert not path.exists()  # removed on shutdown


class _SocketText:
    """Lets a TraceWriter write into a stream writer."""

    def __init__(self, w: asyncio.StreamWriter) -> None:
        self.w = w

    def write(self, s: str) -> int:
        self.w.write(s.encode())
        return len(s)


async def test_stream_source_sink_error_counted() -> None:
    src = StreamSource("127.0.0.1", 0)

    def sink(rec: AdvRecord) -> None:
        raise RuntimeError("full")

    async with running(src, sink):
        assert isinstance(src.address, tuple)
        _r, w = await asyncio.open_connection(*src.address)
        w.write(adv_line(1.0) + adv_line(2.0))
        await w.drain()
        await eventually(lambda: src.stats.errors.get("sink_error") == 2)
        w.close()
        await w.wait_closed()


async def test_stream_source_retries_a_port_in_use_and_keeps_running() -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    got: list[AdvRecord] = []
    src = StreamSource("127.0.0.1", port, bind_retry_s=(0.05, 0.1))
    with capture_logs() as logs:
        task = asyncio.create_task(src.run(got.append))
        try:
            await eventually(lambda: src.stats.bind_failures >= 2)
            assert not task.done()  # still trying, not crashed
            holder.close()
            await asyncio.wait_for(src.wait_ready(), 5)
            assert src.address == ("127.0.0.1", port)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(adv_line(1.0))
            await writer.drain()
            await eventually(lambda: len(got) == 1)
            writer.close()
        finally:
            holder.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    failed = [e for e in logs if e["event"] == "stream_source_bind_failed"]
    assert len(failed) == src.stats.bind_failures
    assert "in use" in failed[0]["error"]
    assert src.stats.as_dict()["bind_failures"] == src.stats.bind_failures


async def test_stream_source_cancel_closes_open_clients() -> None:
    src = StreamSource("127.0.0.1", 0)
    task = asyncio.create_task(src.run(lambda r: None))
    await src.wait_ready()
    assert isinstance(src.address, tuple)
    r, w = await asyncio.open_connection(*src.address)
    await eventually(lambda: src.stats.clients == 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(r.read(), 5) == b""  # server side closed
    w.close()
    await w.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*src.address)


# --- TraceSource -------------------------------------------------------------------


def write_trace(path: Path, times: list[float]) -> None:
    with path.open("w") as fp:
        tw = TraceWriter(fp, "B7")
        for i, t in enumerate(times):
            tw.write(AdvRecord(t, f"C0:00:00:00:00:{i:02X}", -60 - i % 40, {0xFFFF: TOKEN}))
            tw.write(GnssRecord(t, 37.5, 127.0, 1.0))
        fp.write("{broken\n")


async def test_trace_source_as_fast_as_possible(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [1000.0 + i * 10 for i in range(600)])
    src = TraceSource(trace, None)
    got: list[AdvRecord] = []
    started = time.monotonic()
    await asyncio.wait_for(src.run(got.append), 5)
    assert time.monotonic() - started < 5  # 6000 s of trace, no pacing
    assert len(got) == 600
    assert [r.t for r in got[:2]] == [1000.0, 1010.0]
    assert got[1] == AdvRecord(1010.0, "C0:00:00:00:00:01", -61, {0xFFFF: TOKEN})
    assert src.stats.skipped == 600
    assert src.stats.errors == {"invalid": 1}
    assert src.stats.done


async def test_trace_source_paces_by_speed(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [0.0, 1.0, 2.0, 4.0])
    src = TraceSource(trace, speed=10.0)
    loop = asyncio.get_running_loop()
    stamps: list[float] = []
    start = loop.time()
    await src.run(lambda rec: stamps.append(loop.time() - start))
    assert len(stamps) == 4
    # due at 0, 0.1, 0.2, 0.4 s of loop time; never early
    for got, due in zip(stamps, [0.0, 0.1, 0.2, 0.4], strict=True):
        assert got >= due - 0.005
    assert stamps[-1] < 2.0


async def test_trace_source_rejects_bad_speed_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speed"):
        TraceSource(tmp_path / "x", 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"adv"}\n')
    from busbell import TraceError

    with pytest.raises(TraceError):
        await TraceSource(bad).run(lambda r: None)


def test_sources_satisfy_the_protocol(tmp_path: Path) -> None:
    from edge._ble import BleakSource

    sources: list[AdvertisementSource] = [
        StreamSource("127.0.0.1", 0),
        TraceSource(tmp_path / "t.jsonl"),
        BleakSource(ScannerParams(), time.time),
    ]
    assert [s.name for s in sources] == ["stream", "trace", "ble"]


# --- ScannerParams, classify_error, backoff ------------------------------------------


def test_scanner_params_load_and_validate() -> None:
    p = load_config(
        ScannerParams,
        env={"BUSBELL_MODE": "active", "BUSBELL_COMPANY_ID": "0x1234", "BUSBELL_ADAPTER": "hci1"},
    )
    assert (p.mode, p.company_id, p.adapter) == ("active", 0x1234, "hci1")
    assert ScannerParams().mode == "auto"
    assert ScannerParams().company_id == 0xFFFF
    with pytest.raises(ConfigError, match="mode"):
        load_config(ScannerParams, env={"BUSBELL_MODE": "loud"})
    for bad in (
        {"company_id": 0x10000},
        {"silence_restart_s": -1.0},
        {"backoff_initial_s": 5.0, "backoff_max_s": 1.0},
        {"dbus_timeout_s": 0.0},
        {"adapter": "/org/bluez/hci0"},
    ):
        with pytest.raises(ValueError, match="scanner"):
            ScannerParams(**bad)  # type: ignore[arg-type]
    keys = {o.key for o in describe_config(ScannerParams)}
    assert {"mode", "adapter", "company_id", "silence_restart_s"} <= keys


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (BleakDBusError("org.bluez.Error.InProgress", []), "in_progress"),
        (BleakDBusError("org.bluez.Error.NotReady", []), "not_ready"),
        (BleakDBusError("org.freedesktop.DBus.Error.UnknownObject", []), "adapter_missing"),
        (BleakDBusError("org.freedesktop.DBus.Error.AccessDenied", []), "access_denied"),
        (BleakDBusError("org.bluez.Error.Failed", []), "dbus_error"),
        (BleakError("adapter 'hci0' not found"), "adapter_missing"),
        (
            BleakError(
                "passive scanning on Linux requires BlueZ >= 5.56 with --experimental "
                "enabled and Linux kernel >= 5.10"
            ),
            "monitor_unsupported",
        ),
        (
            BleakBluetoothNotAvailableError("x", BleakBluetoothNotAvailableReason.POWERED_OFF),
            "powered_off",
        ),
        (
            BleakBluetoothNotAvailableError("x", BleakBluetoothNotAvailableReason.NO_BLUETOOTH),
            "adapter_missing",
        ),
        (
            BleakBluetoothNotAvailableError("x", BleakBluetoothNotAvailableReason.UNKNOWN),
            "bleak_error",
        ),
        (BleakError("something"), "bleak_error"),
        (AuthError("denied"), "access_denied"),
        (DBusError("org.x.Error", "text"), "dbus_error"),
        (TimeoutError(), "timeout"),
        (FileNotFoundError("/run/dbus/system_bus_socket"), "bus_unavailable"),
        (EOFError(), "bus_unavailable"),
        (KeyError("x"), "unexpected"),
    ],
)
def test_classify_error(exc: BaseException, reason: str) -> None:
    assert classify_error(exc) == reason
