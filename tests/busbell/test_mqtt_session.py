"""``MqttSession`` entering: reentry, reuse after an abandoned attempt, and a cancel that
lands while aiomqtt's blocking TCP connect still runs in the executor thread.

Real mosquitto for live sessions; plain TCP listeners for brokers that never answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from busbell import Topics, UplinkError
from busbell._mqtt import MqttSession, MqttSettings

pytestmark = pytest.mark.mosquitto


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@dataclass
class Front:
    """A TCP front for the broker (see :func:`gated_front`)."""

    port: int
    held: asyncio.Queue[bytes]  # the first bytes of the held first connection
    gate: asyncio.Event  # set: the held first connection goes through to the broker


@contextlib.asynccontextmanager
async def gated_front(host: str, port: int) -> AsyncIterator[Front]:
    """Forwards TCP connections to the broker at ``host:port``, but holds the first one
    after its first two bytes (the CONNECT fixed header) until ``gate`` is set: until
    then it is a broker that accepted the connection and does not answer."""
    front = Front(0, asyncio.Queue(), asyncio.Event())
    closing = False
    handlers: list[asyncio.Task[Any]] = []
    tasks: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        writers.append(writer)
        first = b""
        try:
            if count == 1:
                first = await reader.readexactly(2)
                await front.held.put(first)
                await front.gate.wait()
            if closing:
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            return
        writers.append(up_writer)
        up_writer.write(first)
        tasks.append(asyncio.create_task(_pump(reader, up_writer)))
        tasks.append(asyncio.create_task(_pump(up_reader, writer)))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    front.port = server.sockets[0].getsockname()[1]
    try:
        yield front
    finally:
        closing = True
        front.gate.set()
        await asyncio.gather(*handlers)
        for t in tasks:
            t.cancel()
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


async def test_entering_a_connected_session_again_leaves_it_connected(
    shared_broker: Any, topic_prefix: str
) -> None:
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
    t = Topics(topic_prefix)
    async with MqttSession(settings, f"{topic_prefix}-twice", clean_start=True) as s:
        await s.subscribe([t.status("b1")])
        with pytest.raises(UplinkError, match="not reentrant"):
            await s.__aenter__()
        # the first connection still works: a QoS 1 publish is acknowledged and comes back
        await s.publish(t.status("b1"), b"alive", qos=1)

        async def first() -> bytes:
            async for m in s.messages():
                return m.payload
            raise AssertionError("no message")

        assert await asyncio.wait_for(first(), 10) == b"alive"


async def test_entering_a_connecting_session_again_leaves_the_attempt_alone(
    shared_broker: Any, topic_prefix: str
) -> None:
    t = Topics(topic_prefix)
    async with gated_front(shared_broker.host, shared_broker.port) as front:
        settings = MqttSettings(host="127.0.0.1", port=front.port)
        session = MqttSession(settings, f"{topic_prefix}-racing", clean_start=True)
        entering = asyncio.create_task(session.__aenter__())
        assert (await asyncio.wait_for(front.held.get(), 10))[:1] == b"\x10"  # CONNECT
        with pytest.raises(UplinkError, match="not reentrant"):
            await session.__aenter__()
        front.gate.set()  # the first attempt, untouched, completes
        s = await entering
        try:
            await s.publish(t.status("b1"), b"x", qos=1)
        finally:
            await s.__aexit__(None, None, None)


async def test_a_session_can_be_entered_again_after_a_cancelled_attempt(
    shared_broker: Any, topic_prefix: str
) -> None:
    t = Topics(topic_prefix)
    async with gated_front(shared_broker.host, shared_broker.port) as front:
        settings = MqttSettings(host="127.0.0.1", port=front.port)
        session = MqttSession(settings, f"{topic_prefix}-again", clean_start=True)
        entering = asyncio.create_task(session.__aenter__())
        assert (await asyncio.wait_for(front.held.get(), 10))[:1] == b"\x10"  # CONNECT
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        # the same object, now through to the real broker
        async with session as s:
            await s.publish(t.status("b1"), b"x", qos=1)
        async with session as s:  # and again after a clean exit
            await s.publish(t.status("b1"), b"y", qos=1)


def _syn_sent_to(port: int) -> int:
    """How many sockets of this machine wait for a SYN-ACK from 127.0.0.1:port."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "02" and int(fields[2].split(":")[1], 16) == port:
            n += 1
    return n


@contextlib.contextmanager
def full_backlog() -> Any:
    """A listener whose accept queue is full: a new TCP connect to it stays in SYN_SENT
    (Linux drops the SYN) until :func:`accept` frees a slot. Yields ``(listener, free)``."""
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())

        def free() -> None:
            listener.accept()[0].close()

        yield listener, free
    finally:
        filler.close()
        listener.close()


async def _wait_for_syn_sent(port: int) -> None:
    async with asyncio.timeout(10):
        while not _syn_sent_to(port):
            await asyncio.sleep(0.01)


async def _closed_by_client(listener: socket.socket) -> bytes:
    """Accept the client's connection and read until it closes it (EOF)."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
    got = b""
    with conn:
        while data := await asyncio.wait_for(loop.sock_recv(conn, 4096), 10):
            got += data
    return got


async def test_a_cancel_during_the_tcp_connect_closes_the_socket_that_connect_makes() -> None:
    """aiomqtt runs paho's blocking connect in an executor thread that a cancel cannot
    stop; the socket that thread makes after the cancel must not stay open."""
    with full_backlog() as (listener, free):
        port = listener.getsockname()[1]
        session = MqttSession(MqttSettings(host="127.0.0.1", port=port), f"t-syn-{os.getpid()}")
        entering = asyncio.create_task(session.__aenter__())
        await _wait_for_syn_sent(port)  # the executor thread is inside connect()
        entering.cancel()
        free()  # the SYN retry gets through; the thread's connect() returns a socket
        with pytest.raises(asyncio.CancelledError):
            await entering
        # whatever the client sent (perhaps its CONNECT), it has closed the socket
        got = await _closed_by_client(listener)
        assert got[:1] in (b"", b"\x10"), got


async def test_a_connect_that_outlives_the_wait_is_closed_when_it_returns() -> None:
    """With no time to wait for the thread (timeout 0), the cancel returns at once; the
    session stays busy until the thread's socket is closed."""
    with full_backlog() as (listener, free):
        port = listener.getsockname()[1]
        settings = MqttSettings(host="127.0.0.1", port=port)
        session = MqttSession(settings, f"t-late-{os.getpid()}", timeout_s=0)
        entering = asyncio.create_task(session.__aenter__())
        await _wait_for_syn_sent(port)
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        with pytest.raises(UplinkError, match="not reentrant"):
            await session.__aenter__()
        free()
        got = await _closed_by_client(listener)
        assert got[:1] in (b"", b"\x10"), got
